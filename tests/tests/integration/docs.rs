//! Every command and manifest the README and the guides show is run by a test, or says why it
//! cannot run here. A fenced block of a language users run or apply (sh, bash, console, yaml,
//! toml, dockerfile) must follow a comment line of its own:
//!
//! - `<!-- run by: NAME[, NAME...] -->`: each NAME a test function (`fn NAME` in the workspace's
//!   tests, unit or harness) or a script of the repository (a path) that runs what it shows;
//! - `<!-- not run here: REASON -->`.
//!
//! Blocks without a language (diagrams, quoted output) need neither.

use std::path::Path;

use anyhow::ensure;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const RUN: &[&str] = &["sh", "bash", "console", "yaml", "toml", "dockerfile"];

/// The markdown files users read: the README and docs/.
fn pages() -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut pages = vec![Path::new(ROOT).join("README.md")];
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// Every Rust source under a directory, concatenated: where `fn NAME` is looked for.
fn test_sources(dir: &Path, out: &mut String) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            test_sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

/// What is wrong with the blocks of one page (empty: nothing).
fn check_page(text: &str, sources: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut problems = Vec::new();
    let mut in_block = false;
    for (i, line) in lines.iter().enumerate() {
        let Some(lang) = line.strip_prefix("```") else { continue };
        if in_block {
            in_block = false;
            continue;
        }
        in_block = true;
        if !RUN.contains(&lang.trim()) {
            continue;
        }
        let marker = if i > 0 { lines[i - 1].trim() } else { "" };
        if let Some(names) = marker.strip_prefix("<!-- run by: ").and_then(|m| m.strip_suffix(" -->")) {
            for name in names.split(',').map(str::trim) {
                let found = if name.contains('/') { Path::new(ROOT).join(name).exists() } else { sources.contains(&format!("fn {name}(")) };
                if !found {
                    problems.push(format!("line {}: `run by: {name}` names no test function or file", i + 1));
                }
            }
        } else if marker.strip_prefix("<!-- not run here: ").and_then(|m| m.strip_suffix(" -->")).is_none_or(|reason| reason.len() < 10) {
            problems
                .push(format!("line {}: a ```{lang} block without `<!-- run by: ... -->` or `<!-- not run here: ... -->` above it", i + 1));
        }
    }
    problems
}

#[test]
fn every_command_in_the_docs_is_run_by_a_test_or_says_why_not() -> anyhow::Result<()> {
    let mut sources = String::new();
    for dir in ["tests", "operator/src", "init/src", "contract/src"] {
        test_sources(&Path::new(ROOT).join(dir), &mut sources)?;
    }
    let mut problems = Vec::new();
    let mut blocks = 0;
    for page in pages()? {
        let text = std::fs::read_to_string(&page)?;
        blocks += text.lines().filter(|l| l.strip_prefix("```").is_some_and(|lang| RUN.contains(&lang.trim()))).count();
        let name = page.strip_prefix(ROOT).unwrap_or(&page).display().to_string();
        problems.extend(check_page(&text, &sources).into_iter().map(|p| format!("{name} {p}")));
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    println!("{blocks} command and manifest blocks, each run by a test or marked");
    Ok(())
}

/// The check itself: an unmarked block, a marker naming nothing, and good markers.
#[test]
fn the_docs_check_finds_unmarked_blocks_and_unknown_names() {
    let sources = "fn a_real_test() {}";
    assert_eq!(check_page("```sh\nls\n```\n", sources).len(), 1);
    assert_eq!(check_page("<!-- run by: no_such_test -->\n```yaml\na: b\n```\n", sources).len(), 1);
    assert!(check_page("<!-- run by: a_real_test, tests/run.sh -->\n```sh\nls\n```\n", sources).is_empty());
    assert!(check_page("<!-- not run here: no GitLab Runner on these machines -->\n```toml\n```\n", sources).is_empty());
    assert!(check_page("```\na diagram\n```\n", sources).is_empty());
}
