//! Writes the generated files: the CRD (crds/ and the chart's crds/), the chart's RBAC rules and
//! the table of spec fields (docs/crd-fields.md).
//! `crdgen --check` writes nothing and fails when a file is stale (CI runs it).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (crd, rbac) = match (dind_operator::crd_yaml(), dind_operator::rbac_yaml()) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fields = match dind_operator::fields_markdown() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let files = [
        ("crds/dinddaemon.yaml", &crd),
        ("charts/dind-operator/crds/dinddaemon.yaml", &crd),
        ("charts/dind-operator/files/rbac-rules.yaml", &rbac),
        ("docs/crd-fields.md", &fields),
    ];
    let mut stale = false;
    for (path, content) in files {
        let full = root.join(path);
        let current = std::fs::read_to_string(&full).unwrap_or_default();
        if current == *content {
            continue;
        }
        if check {
            eprintln!("crdgen: {path} is stale; run `cargo run -p dind-operator --bin crdgen` and commit it");
            stale = true;
        } else {
            if let Some(dir) = full.parent()
                && let Err(e) = std::fs::create_dir_all(dir)
            {
                eprintln!("crdgen: {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            if let Err(e) = std::fs::write(&full, content) {
                eprintln!("crdgen: {path}: {e}");
                return ExitCode::FAILURE;
            }
            println!("wrote {path}");
        }
    }
    if stale { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
