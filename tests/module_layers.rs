//! The top-level modules form layers: a module uses only modules of its own layer or below,
//! and no two modules reach each other (no cycle). Read from the sources: every `crate::<m>`
//! path outside the unit-test module at the end of a file counts as a use of `<m>`.
//!
//! The layers are the map in `src/lib.rs`; a new top-level module must be given a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. A module may use modules of its own layer or a lower one.
const LAYERS: &[&[&str]] = &[
    // Leaves: names, numbers and pure checks every layer may use.
    &[
        "bounded",
        "clock",
        "error",
        "headers",
        "health",
        "ids",
        "metrics",
        "private_file",
        "seal",
        "text",
        "uri",
    ],
    // Configuration: plain data, validated; knows no domain module.
    &["config", "logging"],
    // Persistence: records, not flows.
    &["store"],
    // Domain services.
    &["identity", "mfa"],
    &["auth"],
    // Gatehouse's own pages and endpoints.
    &["web"],
    // Connections, the pingora phases, the admin listener and the users CLI.
    &["conns", "proxy", "admin", "users"],
    // Wiring.
    &["server"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level modules: `src/<m>.rs` and `src/<m>/`.
fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("src/")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let name = name.strip_suffix(".rs").unwrap_or(&name).to_string();
            (name != "lib" && name != "main").then_some(name)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::<m>` paths in `text`.
fn named_modules(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        // `use crate::{a, b::c}` names several.
        let names: Vec<&str> = if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|part| part.trim().split("::").next().unwrap_or(""))
                .collect()
        } else {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            vec![&after[..end]]
        };
        for name in names {
            if modules.contains(name) {
                found.insert(name.to_string());
            }
        }
        rest = after;
    }
    found
}

/// Module -> the other top-level modules it uses.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("");
        let owner = first.strip_suffix(".rs").unwrap_or(first).to_string();
        if !modules.contains(&owner) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        // The unit tests at the end of a file may use anything.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for used in named_modules(code, &modules) {
            if used != owner {
                deps.entry(owner.clone()).or_default().insert(used);
            }
        }
    }
    deps
}

/// Every top-level module has a layer, and no module uses one of a higher layer.
#[test]
fn every_module_uses_only_its_own_layer_or_lower_ones() {
    let deps = dependencies();
    let mut problems = Vec::new();
    for (module, used) in &deps {
        let Some(mine) = layer_of(module) else {
            problems.push(format!("`{module}` has no layer in tests/module_layers.rs"));
            continue;
        };
        for other in used {
            if layer_of(other).is_some_and(|theirs| theirs > mine) {
                problems.push(format!("`{module}` (layer {mine}) uses `{other}` above it"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// No two top-level modules reach each other, directly or through others.
#[test]
fn the_module_graph_has_no_cycle() {
    let deps = dependencies();
    // Depth-first search with colours; a grey node met again closes a cycle.
    fn visit(
        node: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in deps.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, deps, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for module in deps.keys() {
        if state.get(module).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(module, &deps, &mut state, &mut stack) {
                panic!("module cycle: {}", cycle.join(" -> "));
            }
        }
    }
}

/// The reader finds uses in every spelling the sources have, so the checks above can fail.
#[test]
fn the_reader_finds_plain_grouped_and_nested_uses() {
    let modules: BTreeSet<String> = ["auth", "store", "config"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    let text = "use crate::{auth::Auth, store};\nlet x = crate::config::model::Secret;";
    let found = named_modules(text, &modules);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(named_modules("crate::unknown::x", &modules).is_empty());
}
