//! No Docker engine runs here, so the image is checked by reading the Dockerfile: the paths,
//! ports and health check it names must be the ones the code and the shipped config use.

use std::path::Path;

use gatehouse::config::file::{CONTAINER_CONFIG_PATH, DEFAULT_DATA_DIR};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

fn instruction<'a>(dockerfile: &'a str, name: &str) -> Vec<&'a str> {
    dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .collect()
}

/// The exposed ports are the container config's proxy and admin ports, the health check
/// probes `/ping` on the admin port, and the config and data paths match the code's.
#[test]
fn the_dockerfile_matches_the_code_defaults_and_the_container_config() {
    let dockerfile = read("Dockerfile");
    let config =
        gatehouse::config::parse(&read("config/container.toml")).expect("container config");
    let proxy_port = config.server.listen[0].port();
    let admin_port = config.server.admin_listen.port();
    assert!(
        config.server.listen[0].ip().is_unspecified(),
        "the container must listen on all interfaces"
    );

    let exposed: Vec<u16> = instruction(&dockerfile, "EXPOSE")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(|p| p.parse().expect("port"))
        .collect();
    assert_eq!(exposed, vec![proxy_port, admin_port]);

    assert!(
        dockerfile.contains(&format!(
            "COPY config/container.toml {CONTAINER_CONFIG_PATH}"
        )),
        "the image must carry config/container.toml at {CONTAINER_CONFIG_PATH}"
    );
    assert!(dockerfile.contains(&format!("ENV GATEHOUSE_CONFIG={CONTAINER_CONFIG_PATH}")));
    assert_eq!(
        instruction(&dockerfile, "VOLUME"),
        vec![format!("[\"{DEFAULT_DATA_DIR}\"]").as_str()]
    );
    assert!(
        dockerfile.contains(&format!("http://127.0.0.1:{admin_port}/ping")),
        "health check must probe /ping"
    );
    assert!(
        instruction(&dockerfile, "USER")
            .iter()
            .all(|u| *u != "root"),
        "must not run as root"
    );
    assert_eq!(instruction(&dockerfile, "CMD"), vec!["[\"serve\"]"]);
}

/// Every local path the build needs is copied into the build stage: the sources, and each
/// crate `Cargo.toml` patches in from the repository (`vendor/`), or `cargo build --locked`
/// fails inside the image.
#[test]
fn the_image_build_copies_every_path_cargo_needs() {
    let dockerfile = read("Dockerfile");
    let copies = instruction(&dockerfile, "COPY").join("\n");
    let manifest = read("Cargo.toml");
    let patched = manifest
        .lines()
        .filter_map(|l| l.split("path = \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .filter_map(|path| path.split('/').next());
    for top in patched.chain(["src", "benches", "examples"]) {
        assert!(
            copies.lines().any(|c| c.starts_with(&format!("{top} "))),
            "the Dockerfile does not copy {top}/"
        );
    }
}
