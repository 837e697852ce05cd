//! The Kubernetes example (`examples/kubernetes/`) holds together: every YAML document
//! parses, the probes sit on the admin listener the ConfigMap's config names (`/live` for
//! liveness, `/ready` for readiness), the Service and the app port match the config, and the
//! config passes Gatehouse's own validation with the Deployment's environment from the
//! Secret.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes")
}

/// Every document of every `.yaml` file, by kind.
fn documents() -> BTreeMap<String, Vec<Value>> {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            for key in ["apiVersion", "kind"] {
                assert!(value[key].is_string(), "{}: no {key}", file.display());
            }
            assert!(
                value["metadata"]["name"].is_string(),
                "{}: no metadata.name",
                file.display()
            );
            let kind = value["kind"].as_str().unwrap().to_string();
            by_kind.entry(kind).or_default().push(value);
        }
    }
    by_kind
}

use serde::Deserialize;

fn one<'a>(docs: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
    match docs.get(kind).map(Vec::as_slice) {
        Some([doc]) => doc,
        other => panic!("want exactly one {kind}, found {other:?}"),
    }
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {name} container"))
}

/// A probe's or Service's port (a number, or the name of one of the container's ports) as
/// a number.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().expect("a port number or name");
    container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

/// The ConfigMap's Gatehouse config text.
fn config_text(docs: &BTreeMap<String, Vec<Value>>) -> String {
    one(docs, "ConfigMap")["data"]["gatehouse.toml"]
        .as_str()
        .expect("data.gatehouse.toml")
        .to_string()
}

/// The Gatehouse container's environment, with each `secretKeyRef` read from the Secret.
fn environment(docs: &BTreeMap<String, Vec<Value>>) -> Vec<(String, String)> {
    let secret = one(docs, "Secret");
    let gatehouse = container(one(docs, "Deployment"), "gatehouse");
    let mut env = Vec::new();
    for var in gatehouse["env"].as_sequence().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_string();
        let value = match var["value"].as_str() {
            Some(v) => v.to_string(),
            None => {
                let by = &var["valueFrom"]["secretKeyRef"];
                assert_eq!(
                    by["name"], secret["metadata"]["name"],
                    "{name}: another Secret"
                );
                let key = by["key"].as_str().expect("secretKeyRef.key");
                secret["stringData"][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: the Secret has no {key}"))
                    .to_string()
            }
        };
        env.push((name, value));
    }
    env
}

/// The ConfigMap's config, validated by Gatehouse with the Deployment's environment.
fn validated(docs: &BTreeMap<String, Vec<Value>>) -> gatehouse::config::Config {
    for (name, value) in environment(docs) {
        // Only this test binary's tests read these variables; each sets the same values.
        std::env::set_var(name, value);
    }
    gatehouse::config::parse(&config_text(docs))
        .unwrap_or_else(|e| panic!("the ConfigMap's config has problems:\n{e}"))
}

/// The ConfigMap's config passes Gatehouse's validation (every secret it names comes from
/// the Secret through the Deployment's environment), and is mounted where the container's
/// `--config` argument looks.
#[test]
fn the_configmap_config_passes_gatehouse_validation_where_the_container_reads_it() {
    let docs = documents();
    let config = validated(&docs);
    assert_eq!(config.connections.len(), 1);
    let gatehouse = container(one(&docs, "Deployment"), "gatehouse");
    let args: Vec<&str> = gatehouse["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let path = Path::new(args[at + 1]);
    let mount = gatehouse["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == path.parent().unwrap())
        .expect("a volume mounted at the config's folder");
    let volume = one(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(
        volume["configMap"]["name"],
        one(&docs, "ConfigMap")["metadata"]["name"]
    );
    assert_eq!(path.file_name().unwrap(), "gatehouse.toml");
    // The data directory is a mounted, writable volume.
    assert!(gatehouse["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(
            |m| Path::new(m["mountPath"].as_str().unwrap()) == config.data_dir
                && m["readOnly"].as_bool() != Some(true)
        ));
}

/// Liveness asks `/live` and readiness `/ready`, both on the port the config's admin
/// listener uses, which listens beyond loopback so the kubelet reaches it.
#[test]
fn the_probes_ask_live_and_ready_on_the_admin_listener() {
    let docs = documents();
    let config = validated(&docs);
    let gatehouse = container(one(&docs, "Deployment"), "gatehouse");
    let admin = config.server.admin_listen;
    assert!(
        !admin.ip().is_loopback(),
        "the kubelet cannot reach {admin}"
    );
    for (probe, path) in [("livenessProbe", "/live"), ("readinessProbe", "/ready")] {
        let get = &gatehouse[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            resolve_port(gatehouse, &get["port"]),
            admin.port(),
            "{probe}: not the admin listener"
        );
    }
}

/// The Service sends traffic to Gatehouse's proxy listener (never the admin listener or the
/// app), and the config's upstream is the app container's port on localhost.
#[test]
fn the_service_reaches_the_proxy_and_the_proxy_reaches_the_app() {
    let docs = documents();
    let config = validated(&docs);
    let deployment = one(&docs, "Deployment");
    let gatehouse = container(deployment, "gatehouse");
    let service = one(&docs, "Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    let proxy_ports: Vec<u16> = config.server.listen.iter().map(|a| a.port()).collect();
    for port in service["spec"]["ports"].as_sequence().expect("ports") {
        let target = resolve_port(gatehouse, &port["targetPort"]);
        assert!(
            proxy_ports.contains(&target),
            "the Service targets {target}, not a proxy listener {proxy_ports:?}"
        );
    }
    let app = container(deployment, "app");
    let app_ports: Vec<u16> = app["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap() as u16)
        .collect();
    for upstream in &config.upstreams {
        assert!(upstream.address.is_local(), "{:?}", upstream.address);
        assert!(app_ports.contains(&upstream.address.port()));
    }
}
