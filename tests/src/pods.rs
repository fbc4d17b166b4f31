//! Build pods of the end-to-end tests and benchmarks: the example (one label, Docker injected by
//! the webhook) and the same pod wired by hand (as users had to before the webhook).

/// The image of build pods here: busybox and today's clients (tests/images/build.sh).
pub const CLIENT_IMAGE: &str = "dind-client:test";

const EXAMPLE: &str = include_str!("../../examples/build-pod.yaml");

/// examples/build-pod.yaml with this machine's client image and the given names.
pub fn injected_build_pod(pod: &str, daemon: &str) -> String {
    EXAMPLE
        .replace("image: docker:29-cli", &format!("image: {CLIENT_IMAGE}\n      imagePullPolicy: Never"))
        .replace("name: build\n  labels", &format!("name: {pod}\n  labels"))
        .replace("dind.dev/inject: ci", &format!("dind.dev/inject: {daemon}"))
}

/// The example's build, wired by hand: DOCKER_HOST to the client Service, the certificates
/// mounted, the client label, and a retry loop until the Service routes.
pub fn hand_wired_build_pod(pod: &str, daemon: &str) -> String {
    let script = EXAMPLE.split_once("        - |\n").map(|(_, s)| s).unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  labels:
    dind.dev/client: {daemon}
spec:
  restartPolicy: Never
  containers:
    - name: build
      image: {CLIENT_IMAGE}
      imagePullPolicy: Never
      env:
        - {{name: DOCKER_HOST, value: "tcp://{daemon}:2376"}}
        - {{name: DOCKER_TLS_VERIFY, value: "1"}}
        - {{name: DOCKER_CERT_PATH, value: /certs/client}}
      volumeMounts:
        - {{name: client-certs, mountPath: /certs/client, readOnly: true}}
      command: ["/bin/sh", "-ec"]
      args:
        - |
          for i in $(seq 30); do docker version >/dev/null 2>&1 && break; sleep 1; done
{script}  volumes:
    - name: client-certs
      secret:
        secretName: {daemon}-client
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_pods_are_yaml_and_run_the_examples_script() {
        for text in [injected_build_pod("b", "d"), hand_wired_build_pod("b", "d")] {
            let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(v["metadata"]["name"], "b");
            let script = v["spec"]["containers"][0]["args"][0].as_str().unwrap();
            assert!(script.contains("docker build -t example/app ."), "{script}");
            assert_eq!(v["spec"]["containers"][0]["image"], CLIENT_IMAGE);
        }
    }
}
