//! Per-request pipeline steps, each on its own: path normalization, header stripping and route
//! classification. Run with `cargo bench --bench pipeline`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};

use gatehouse::proxy::hygiene::HeaderHygiene;
use gatehouse::proxy::routes::Router;
use gatehouse::uri::path::normalize;

const CONFIG: &str = r#"
[[upstreams]]
url = "http://127.0.0.1:8080"
[[upstreams]]
path_prefix = "/api"
url = "http://127.0.0.1:8081"
[[upstreams]]
host = "*.example.com"
url = "http://127.0.0.1:8082"
[[public]]
path = "/healthz"
[[public]]
path = "/static"
match = "prefix"
[[public]]
path = "/assets/[a-z0-9]+\\.(css|js)"
match = "regex"
"#;

fn path_normalization(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    for (name, raw) in [
        ("clean", "/api/v1/users/42/profile"),
        (
            "dots_and_escapes",
            "/api/./v1//users/%34%32/../42/profile%20x",
        ),
    ] {
        group.bench_function(name, |b| b.iter(|| normalize(black_box(raw))));
    }
    group.finish();
}

fn typical_headers(spoofed: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "_gatehouse=abcdef0123456789"),
        ("referer", "https://app.example.com/"),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    if spoofed {
        h.insert("x_auth_request_user", "mallory".parse().unwrap());
        h.insert("x-gatehouse-user-id", "1".parse().unwrap());
    }
    h
}

fn header_stripping(c: &mut Criterion) {
    let config = gatehouse::config::parse(CONFIG).unwrap();
    let hygiene = HeaderHygiene::new(
        &config.headers.owned_names(),
        config.headers.strip_foreign_identity,
    );
    let mut group = c.benchmark_group("strip_headers");
    for (name, spoofed) in [("clean", false), ("spoofed", true)] {
        let headers = typical_headers(spoofed);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| hygiene.strip(h),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn route_classification(c: &mut Criterion) {
    let config = gatehouse::config::parse(CONFIG).unwrap();
    let router = Router::new(config.public, config.upstreams);
    let mut group = c.benchmark_group("classify");
    for (name, raw) in [
        ("protected", "/api/v1/users"),
        ("public_regex", "/assets/site01.css"),
        ("public_prefix", "/static/app.js"),
    ] {
        let path = normalize(raw).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let route = router.classify(&Method::GET, black_box(&path));
                let upstream = router.upstream_index(Some("app.example.com"), &path);
                (route, upstream)
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    path_normalization,
    header_stripping,
    route_classification
);
criterion_main!(benches);
