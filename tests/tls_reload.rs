//! TLS certificate reload: `POST /api/reload` (as SIGHUP) reads `[server] tls_cert` and
//! `tls_key` again, whether or not the config file changed (a renewed certificate keeps its
//! path). New handshakes get the new certificate, established connections keep theirs; a
//! pair that cannot be served (missing, garbage, a key of another certificate) is refused,
//! naming the key at fault, counted, and the old certificate keeps serving. The served
//! certificate's notAfter is exported as `gatehouse_tls_certificate_expiry_timestamp_seconds`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{start_echo, Echo};
use gatehouse::server::{Listeners, Running};

const TOKEN: &str = "tls-reload-test-token-0123456789abcdef";

/// A self-signed certificate for `localhost` valid until January 1st of `year`, and its key.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    /// notAfter, unix seconds.
    not_after: i64,
}

fn pair(year: i32) -> Pair {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
        not_after: params.not_after.unix_timestamp(),
    }
}

/// A Gatehouse with a TLS listener, serving a config file, with its certificate files.
struct Served {
    _echo: Echo,
    gatehouse: Running,
    dir: tempfile::TempDir,
    file: PathBuf,
    upstream: SocketAddr,
    /// Every certificate a client of this test trusts.
    roots: Vec<String>,
}

fn config(upstream: SocketAddr, cert: &Path, key: &Path, tls_listen: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"{tls_listen}\"]\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         worker_threads = 2\nshutdown_grace = \"1s\"\n\
         [log]\naccess_log = false\n[admin]\ntoken = \"{TOKEN}\"\n\
         [[upstreams]]\nurl = \"http://{upstream}\"\n\
         [[public]]\npath = \"/\"\nmatch = \"prefix\"\n",
        cert.display(),
        key.display()
    )
}

/// Serves `first` from `tls.crt` / `tls.key`; clients trust every pair in `trusted`.
async fn serve(first: &Pair, trusted: &[&Pair]) -> Served {
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(&file, config(echo.addr, &cert, &key, "127.0.0.1:0")).unwrap();
    let config = gatehouse::config::load(&file).unwrap();
    let listeners = Listeners::bind(&config.server).unwrap();
    let gatehouse = gatehouse::server::spawn_reloadable(&config, listeners, &file).unwrap();
    Served {
        upstream: echo.addr,
        _echo: echo,
        gatehouse,
        file,
        roots: trusted.iter().map(|p| p.cert_pem.clone()).collect(),
        dir,
    }
}

impl Served {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client that trusts every test certificate and opens its own connections.
    fn client(&self) -> reqwest::Client {
        let tls = self.gatehouse.addresses.tls[0];
        let mut builder = reqwest::Client::builder()
            .resolve("localhost", tls)
            .tls_info(true)
            .timeout(std::time::Duration::from_secs(10));
        for pem in &self.roots {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    /// The certificate (DER) `client` was served on the connection that carried a request.
    async fn served_over(&self, client: &reqwest::Client) -> Vec<u8> {
        let port = self.gatehouse.addresses.tls[0].port();
        let response = client
            .get(format!("https://localhost:{port}/tls"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let info = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .expect("TLS info");
        info.peer_certificate().expect("a certificate").to_vec()
    }

    /// The certificate a new connection is served.
    async fn served(&self) -> Vec<u8> {
        self.served_over(&self.client()).await
    }

    async fn reload(&self) -> (u16, serde_json::Value) {
        let response = common::client()
            .post(format!(
                "http://{}/api/reload",
                self.gatehouse.addresses.admin
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn metric(&self, name: &str) -> Option<String> {
        let text = common::client()
            .get(format!("http://{}/metrics", self.gatehouse.addresses.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    }

    async fn expiry(&self) -> Option<String> {
        self.metric("gatehouse_tls_certificate_expiry_timestamp_seconds ")
            .await
    }

    async fn reload_errors(&self) -> Option<String> {
        self.metric("gatehouse_config_reloads_total{result=\"error\"}")
            .await
    }
}

/// A renewed certificate written over the old files (config file unchanged) is served to new
/// connections after a reload, and its notAfter is exported; a connection opened before the
/// reload goes on with the certificate it was given.
#[tokio::test]
async fn a_reload_serves_a_certificate_renewed_at_the_same_paths_to_new_connections() {
    let (one, two) = (pair(2030), pair(2031));
    let s = serve(&one, &[&one, &two]).await;
    assert_eq!(s.served().await, one.der);
    assert_eq!(s.expiry().await, Some(one.not_after.to_string()));
    let established = s.client();
    assert_eq!(s.served_over(&established).await, one.der);

    std::fs::write(s.path("tls.crt"), &two.cert_pem).unwrap();
    std::fs::write(s.path("tls.key"), &two.key_pem).unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], serde_json::json!([]), "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!([]), "{body}");
    assert_eq!(
        body["certificate"],
        serde_json::json!({ "not_after": two.not_after, "changed": true }),
        "{body}"
    );
    assert_eq!(s.served().await, two.der, "a new connection");
    assert_eq!(s.expiry().await, Some(two.not_after.to_string()));
    assert_eq!(
        s.served_over(&established).await,
        one.der,
        "the connection opened before the reload"
    );

    // Nothing changed: the same certificate goes on, and the answer says so.
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["certificate"]["changed"], false, "{body}");
    assert_eq!(s.served().await, two.der);
}

/// Every way the pair can break (the key of another certificate, garbage in the key file,
/// a truncated key, the key file gone, garbage in the certificate file, a key in place of
/// the certificate) refuses the reload with the key of the file at fault in the answer,
/// counts `gatehouse_config_reloads_total{result="error"}`, and leaves the certificate in
/// force serving new connections, its expiry unchanged.
#[tokio::test]
async fn a_broken_certificate_or_key_is_refused_and_the_served_one_stays() {
    let (one, two, other) = (pair(2030), pair(2031), pair(2032));
    let s = serve(&one, &[&one, &two, &other]).await;
    std::fs::write(s.path("tls.crt"), &two.cert_pem).unwrap();
    std::fs::write(s.path("tls.key"), &two.key_pem).unwrap();
    assert_eq!(s.reload().await.0, 200);
    assert_eq!(s.served().await, two.der);

    let truncated = &two.key_pem[..two.key_pem.len() / 2];
    let cases: [(&str, &str, Option<&str>, &str); 6] = [
        (
            "another certificate's key",
            &two.cert_pem,
            Some(&other.key_pem),
            "server.tls_key",
        ),
        (
            "garbage key",
            &two.cert_pem,
            Some("not a key\n"),
            "server.tls_key",
        ),
        (
            "truncated key",
            &two.cert_pem,
            Some(truncated),
            "server.tls_key",
        ),
        ("key file gone", &two.cert_pem, None, "server.tls_key"),
        (
            "garbage certificate",
            "not a certificate\n",
            Some(&two.key_pem),
            "server.tls_cert",
        ),
        (
            "key as certificate",
            &two.key_pem,
            Some(&two.key_pem),
            "server.tls_cert",
        ),
    ];
    for (n, (what, cert, key, named)) in cases.into_iter().enumerate() {
        std::fs::write(s.path("tls.crt"), cert).unwrap();
        match key {
            Some(key) => std::fs::write(s.path("tls.key"), key).unwrap(),
            None => std::fs::remove_file(s.path("tls.key")).unwrap(),
        }
        let (status, body) = s.reload().await;
        assert_eq!(status, 422, "{what}: {body}");
        let problems = body["problems"].as_array().expect("problems");
        assert!(
            problems
                .iter()
                .any(|p| p.as_str().is_some_and(|p| p.starts_with(named))),
            "{what}: {body}"
        );
        assert_eq!(s.served().await, two.der, "{what}");
        assert_eq!(s.expiry().await, Some(two.not_after.to_string()), "{what}");
        assert_eq!(s.reload_errors().await, Some((n + 1).to_string()), "{what}");
    }

    // Repaired: the next reload serves the files again.
    std::fs::write(s.path("tls.crt"), &other.cert_pem).unwrap();
    std::fs::write(s.path("tls.key"), &other.key_pem).unwrap();
    assert_eq!(s.reload().await.0, 200);
    assert_eq!(s.served().await, other.der);
}

/// Certificate and key paths changed in the file are applied (the pair is read from the new
/// paths); a changed `tls_listen` is named as needing a restart and the listener stays.
#[tokio::test]
async fn new_certificate_paths_apply_and_a_new_tls_listen_needs_a_restart() {
    let (one, two) = (pair(2030), pair(2031));
    let s = serve(&one, &[&one, &two]).await;
    let (cert, key) = (s.path("renewed.crt"), s.path("renewed.key"));
    std::fs::write(&cert, &two.cert_pem).unwrap();
    std::fs::write(&key, &two.key_pem).unwrap();
    std::fs::write(&s.file, config(s.upstream, &cert, &key, "127.0.0.1:1")).unwrap();
    let (status, body) = s.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["applied"],
        serde_json::json!(["server.tls_cert", "server.tls_key"]),
        "{body}"
    );
    assert_eq!(
        body["needs_restart"],
        serde_json::json!(["server.tls_listen"]),
        "{body}"
    );
    assert_eq!(s.served().await, two.der);
}
