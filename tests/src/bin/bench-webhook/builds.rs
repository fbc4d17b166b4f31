//! Part 4 of the webhook benchmark: the same `docker build` in consecutive sidecar pods of a
//! pipeline on the volume pool, cold then warm, of a tiny Dockerfile and of a CI build.

use anyhow::Context as _;
use dind_tests::{kubectl_apply, run_tool};
use serde_json::json;

use crate::{run_to_success, sidecar_pod, wait_for_free_volume};

/// Runs both builds in three pipelines each and prints their cold and warm times and ratios.
pub async fn cold_vs_warm(builds: &str) -> anyhow::Result<()> {
    // Three pipelines of each Dockerfile, each a DindDaemon of its own with one fresh volume.
    // Two Dockerfiles: a tiny one (5 s of `sleep` and shell), where the warm build is mostly the
    // clients' own start, and the commonest CI build there is, a Go service compiled in a
    // `golang` stage and copied into a small image (the toolchain is this machine's Go, mounted
    // from the node at /opt/go and imported into the pod's daemon before the clock starts).
    let mut all = vec![Pipeline { name: "tiny", from_node: None, dockerfile: TINY }];
    if std::path::Path::new("/usr/local/go/bin/go").exists() {
        let go = NodeImage { host: "/usr/local/go", in_pod: "/opt/go", image: "go" };
        all.push(Pipeline { name: "go", from_node: Some(go), dockerfile: GO_SERVICE });
    } else {
        println!("go: skipped, this node has no Go at /usr/local/go");
    }
    let mut summary = Vec::new();
    for p in all {
        let (cold, warm, ratio, clients) = pipelines(builds, &p).await?;
        println!(
            "{}: docker build in consecutive pods on the pool, median of 3 pipelines: cold {cold:.2} s, warm {warm:.2} s, ratio {ratio:.1}x \
             (target >= 20x); in the warm pod `docker buildx version` alone {clients:.2} s",
            p.name
        );
        summary.push(format!("{} {ratio:.1}x (cold {cold:.2} s, warm {warm:.2} s)", p.name));
    }
    println!("cold/warm build ratio, median of 3 pipelines: {}", summary.join(", "));
    Ok(())
}

/// A build that part 4 runs cold and then warm: its Dockerfile and the files beside it (made by a
/// shell script in the pod), and the base image it needs from the node, if any.
struct Pipeline {
    name: &'static str,
    from_node: Option<NodeImage>,
    dockerfile: &'static str,
}

/// A directory of the node mounted into the job pod (read-only) and imported into the pod's
/// daemon as `local/<image>` before the clock starts (no registry here).
struct NodeImage {
    host: &'static str,
    /// Where the pod sees it: outside the directories that make `local/base`.
    in_pod: &'static str,
    image: &'static str,
}

/// Part 4's tiny build: a COPY, an echo, three seconds of sleep and a shell loop.
const TINY: &str = r#"printf 'FROM local/base\nCOPY one.txt /one.txt\nRUN echo two > /two.txt\nRUN sleep 3 && echo three > /three.txt\nRUN for i in $(seq 200000); do :; done\n' > Dockerfile
echo one > one.txt"#;

/// Part 4's CI build: a small HTTP service compiled in a Go stage (standard library only, so no
/// module download), its binary copied into the base image.
const GO_SERVICE: &str = r#"printf 'module example.com/svc\n\ngo 1.26\n' > go.mod
cat > main.go <<'EOF'
package main

import (
	"encoding/json"
	"log"
	"net/http"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"path": r.URL.Path})
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
EOF
printf 'FROM local/go AS build\nENV CGO_ENABLED=0 GOTOOLCHAIN=local GOPROXY=off GOCACHE=/root/.cache/go-build GOPATH=/root/go HOME=/root\nWORKDIR /src\nCOPY go.mod main.go ./\nRUN ["go", "build", "-trimpath", "-o", "/svc", "."]\nFROM local/base\nCOPY --from=build /svc /usr/local/bin/svc\n' > Dockerfile"#;

/// Runs `p` in three pipelines (each a Sidecar DindDaemon with a pool of one fresh volume): a
/// cold pod, then a warm pod on the same volume once the first has let it go. Medians of the
/// cold and warm `docker build`, of their ratio and of the clients' own start in the warm pod.
async fn pipelines(builds: &str, p: &Pipeline) -> anyhow::Result<(f64, f64, f64, f64)> {
    // Base images are imported before the clock starts; the warm pod finds them on its volume.
    let mut script = String::from(
        "docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null\n",
    );
    if let Some(NodeImage { in_pod, image, .. }) = &p.from_node {
        script += &format!(
            "docker image inspect local/{image} >/dev/null 2>&1 || tar -C / -c bin lib lib64 tmp {} 2>/dev/null | docker import -c 'ENV PATH={in_pod}/bin:/bin' - local/{image} >/dev/null\n",
            in_pod.trim_start_matches('/')
        );
    }
    script += &format!("mkdir -p /work/app && cd /work/app\n{}\n", p.dockerfile);
    script += r#"a=$(cut -d' ' -f1 /proc/uptime); id=$(docker build -q -t bench/app .); b=$(cut -d' ' -f1 /proc/uptime)
docker buildx version >/dev/null; c=$(cut -d' ' -f1 /proc/uptime)
echo "UP $(echo "$a $b" | awk '{print $2 - $1}')"
echo "CLIENTS $(echo "$b $c" | awk '{print $2 - $1}')"
echo "IMAGE $id""#;
    let mut same = 0;
    let (mut colds, mut warms, mut ratios, mut clients) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in 0..3 {
        let daemon = format!("{}-{k}", p.name);
        kubectl_apply(builds, &format!("apiVersion: dind.dev/v1alpha1\nkind: DindDaemon\nmetadata: {{name: {daemon}}}\nspec: {{mode: Sidecar, volumePool: {{size: 1}}, storage: {{size: 4Gi}}}}\n")).await?;
        run_tool("kubectl", &["wait", "-n", builds, "--for=condition=Ready", &format!("dind/{daemon}"), "--timeout=60s"]).await?;
        let (mut times, mut images) = (Vec::new(), Vec::new());
        for run in ["cold", "warm"] {
            wait_for_free_volume(builds, &format!("{daemon}-cache-0")).await?;
            let name = format!("{daemon}-{run}");
            let mut pod = sidecar_pod(&name, &daemon, &script);
            if let Some(n) = &p.from_node {
                pod["spec"]["volumes"] = json!([{"name": "host", "hostPath": {"path": n.host}}]);
                pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "host", "mountPath": n.in_pod, "readOnly": true}]);
            }
            let log = run_to_success(builds, &pod, &name, "600s").await?;
            let line = |prefix: &str| log.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim).context("no figure");
            let figure = |prefix: &str| -> anyhow::Result<f64> { Ok(line(prefix)?.parse()?) };
            times.push(figure("UP ")?);
            images.push(line("IMAGE ")?.to_string());
            if run == "warm" {
                clients.push(figure("CLIENTS ")?);
            }
            run_tool("kubectl", &["delete", "pod", "-n", builds, &name, "--wait=false"]).await?;
        }
        // A build whose every step came from the cache makes the very image the cold one made.
        let cached = images[0] == images[1];
        same += usize::from(cached);
        println!(
            "{} pipeline {k}: docker build cold {:.2} s, warm {:.2} s, ratio {:.1}x, {}",
            p.name,
            times[0],
            times[1],
            times[0] / times[1].max(0.01),
            if cached { "same image (every step cached)" } else { "a different image: NOT every step cached" }
        );
        colds.push(times[0]);
        warms.push(times[1]);
        ratios.push(times[0] / times[1].max(0.01));
    }
    for v in [&mut colds, &mut warms, &mut ratios, &mut clients] {
        v.sort_by(f64::total_cmp);
    }
    println!("{}: the warm build made the cold build's image in {same} of 3 pipelines", p.name);
    Ok((colds[1], warms[1], ratios[1], clients[1]))
}
