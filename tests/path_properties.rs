//! Property tests: for every generated hostile path the normalizer accepts, the public and
//! `[[access]]` decisions agree with every way a common backend may read the forwarded path
//! (raw, decoded once or twice, by a strict or a lenient UTF-8 decoder, path parameters stripped before or after decoding, `\` read
//! as `/`, dot segments resolved or not; case-folded where the rule is case-insensitive).

use gatehouse::identity::access::AccessPolicy;
use gatehouse::identity::Identity;
use gatehouse::proxy::routes::{Route, Router};
use gatehouse::uri::path::{normalize, NormalPath};
use http::Method;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

const CONFIG: &str = r#"
[[upstreams]]
url = "http://127.0.0.1:1"

[[public]]
path = "/public"
match = "prefix"

[[public]]
path = "/Assets"
match = "prefix"
case_sensitive = false

[[public]]
path = "/health"

[[public]]
path = "/static/[a-z]+\\.css"
match = "regex"

[[access]]
path = "/admin"
match = "prefix"
allowed_groups = ["admins"]

[[access]]
path = "/Private"
match = "prefix"
case_sensitive = false
allowed_groups = ["staff"]

[[access]]
path = "/public/admin"
match = "prefix"
allowed_groups = ["admins"]

[[access]]
path = "/api/keys"
allowed_groups = ["admins"]

[[access]]
path = "/secret/.*"
match = "regex"
case_sensitive = false
allowed_groups = ["admins"]
"#;

/// The alphabet paths are built from: separators, dots, parameters, names in several cases
/// and escapes a normalizer keeps...
const COMMON: &[&str] = &[
    "/", "/", "/", "//", ".", "..", ";", ";x", ";a=b", "public", "PUBLIC", "Public", "admin",
    "ADMIN", "Admin", "assets", "Assets", "health", "static", "site.css", "private", "Private",
    "api", "keys", "secret", "x", "%2e", "%2E", "%2e%2e", "%25", "2e", "%32", "%65", "%61dmin",
    "%70ublic", "%C3%A9", "%20", "%3F",
];

/// ...and the ones it must refuse: double encoding, overlong UTF-8, encoded separators and
/// semicolons, backslashes.
const HOSTILE: &[&str] = &[
    "%252e",
    "%252E",
    "%2541",
    "%c0%ae",
    "%e0%80%ae",
    "%c0%af",
    "%ed%a0%80",
    "%80",
    "%3b",
    "%253b",
    "%2f",
    "%252f",
    "%5c",
    "%255c",
    "\\",
];

/// Where a path starts: public and protected prefixes, in several cases.
const PREFIXES: &[&str] = &[
    "/",
    "/public",
    "/public/",
    "/PUBLIC/",
    "/Public/",
    "/assets/",
    "/ASSETS/",
    "/health",
    "/static/",
    "/admin",
    "/admin/",
    "/ADMIN/",
    "/private/",
    "/PRIVATE/",
    "/api/keys",
    "/secret/",
    "/public/admin",
];

fn hostile_path() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        6 => prop::sample::select(COMMON),
        1 => prop::sample::select(HOSTILE),
    ];
    let start = prop::sample::select(PREFIXES);
    (start, prop::collection::vec((token, any::<bool>()), 0..10)).prop_map(|(start, tokens)| {
        let mut path = String::from(start);
        for (token, upper) in tokens {
            if upper {
                path.push_str(&token.to_ascii_uppercase());
            } else {
                path.push_str(token);
            }
        }
        path
    })
}

/// Percent-decodes once. `lenient`: as a decoder that accepts overlong UTF-8 and surrogates
/// (`%c0%ae` read as `.`), as some servers have.
fn decode(s: &str, lenient: bool) -> String {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(s).collect();
    if !lenient {
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (len, init) = match b {
            0..=0x7f => (1, u32::from(b)),
            0xc0..=0xdf => (2, u32::from(b & 0x1f)),
            0xe0..=0xef => (3, u32::from(b & 0x0f)),
            0xf0..=0xf7 => (4, u32::from(b & 0x07)),
            _ => (0, 0),
        };
        let tail = bytes.get(i + 1..i + len.max(1));
        match tail {
            Some(tail) if len > 0 && tail.iter().all(|c| c & 0xc0 == 0x80) => {
                let cp = tail
                    .iter()
                    .fold(init, |acc, c| acc << 6 | u32::from(c & 0x3f));
                out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                i += len;
            }
            _ => {
                out.push('\u{fffd}');
                i += 1;
            }
        }
    }
    out
}

fn strip_parameters(s: &str) -> String {
    s.split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// Dot segments resolved and `//` collapsed, clamped at `/`, as most servers do.
fn resolve(s: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = s.ends_with('/');
    for seg in s.split('/') {
        match seg {
            "" => {}
            "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            other => {
                out.push(other);
                trailing = false;
            }
        }
    }
    let trailing = trailing || s.ends_with('/');
    let mut text = format!("/{}", out.join("/"));
    if trailing && !text.ends_with('/') {
        text.push('/');
    }
    text
}

#[derive(Clone, Copy, PartialEq)]
enum Strip {
    Never,
    BeforeDecoding,
    AfterDecoding,
}

/// Every reading of the forwarded path a backend may take.
fn interpretations(forwarded: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (decodes, lenient) in [(0, false), (1, false), (1, true), (2, false), (2, true)] {
        for strip in [Strip::Never, Strip::BeforeDecoding, Strip::AfterDecoding] {
            for backslash in [false, true] {
                let mut s = forwarded.to_string();
                if strip == Strip::BeforeDecoding {
                    s = strip_parameters(&s);
                }
                for _ in 0..decodes {
                    s = decode(&s, lenient);
                }
                if backslash {
                    s = s.replace('\\', "/");
                }
                if strip == Strip::AfterDecoding {
                    s = strip_parameters(&s);
                }
                out.push(resolve(&s));
                out.push(s);
            }
        }
    }
    out
}

struct Setup {
    router: Router,
    public: Vec<gatehouse::config::model::PathRule>,
    /// One policy per `[[access]]` rule, with the rule itself.
    access: Vec<(gatehouse::config::model::PathRule, AccessPolicy)>,
    outsider: Identity,
}

fn setup() -> Setup {
    let config = gatehouse::config::parse(CONFIG).expect("valid config");
    let access = config
        .access
        .iter()
        .map(|a| (a.when.clone(), AccessPolicy::new(&[], vec![a.clone()])))
        .collect();
    Setup {
        router: Router::new(config.public.clone(), config.upstreams.clone()),
        public: config.public,
        access,
        outsider: Identity::new("corp", "nobody"),
    }
}

#[derive(Default)]
struct Counts {
    accepted: usize,
    public: usize,
    applied: usize,
}

fn check(s: &Setup, raw: &str, normal: &NormalPath, counts: &mut Counts) -> Result<(), String> {
    let get = Method::GET;
    let readings = interpretations(normal.as_str());
    counts.accepted += 1;
    if s.router.classify(&get, normal) == Route::Public {
        counts.public += 1;
        for reading in &readings {
            if !s.public.iter().any(|r| r.matches(&get, reading)) {
                return Err(format!(
                    "{raw} (forwarded {}) is public, but a backend may read it as {reading}, which is not",
                    normal.as_str()
                ));
            }
        }
    }
    for (rule, policy) in &s.access {
        let applied = policy.check(None, &get, normal, &s.outsider, true).is_err();
        counts.applied += usize::from(applied);
        if let Some(reading) = readings.iter().find(|r| rule.matches(&get, r)) {
            if !applied {
                return Err(format!(
                    "{raw} (forwarded {}) escapes {:?}: a backend may read it as {reading}",
                    normal.as_str(),
                    rule.path
                ));
            }
        }
    }
    // What is forwarded is accepted again unchanged: the app sees what was checked.
    match normalize(normal.as_str()) {
        Ok(again) if again == *normal => Ok(()),
        other => Err(format!("{raw}: forwarded form renormalizes to {other:?}")),
    }
}

/// Over 20,000 generated hostile paths, an accepted path is public only when every backend
/// reading of it is public, and an `[[access]]` rule applies whenever any reading falls under
/// it. The run also shows the generator is not vacuous: many paths are accepted, some public,
/// some under a rule.
#[test]
fn every_backend_reading_of_an_accepted_path_gets_the_same_decision() {
    let setup = setup();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let counts = std::cell::RefCell::new(Counts::default());
    let result = runner.run(&hostile_path(), |raw| {
        let Ok(normal) = normalize(&raw) else {
            return Ok(());
        };
        check(&setup, &raw, &normal, &mut counts.borrow_mut()).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let counts = counts.into_inner();
    eprintln!(
        "accepted {} public {} rule applications {}",
        counts.accepted, counts.public, counts.applied
    );
    assert!(
        counts.accepted >= 8_000,
        "only {} accepted",
        counts.accepted
    );
    assert!(counts.public >= 2_000, "only {} public", counts.public);
    assert!(
        counts.applied >= 2_000,
        "only {} under a rule",
        counts.applied
    );
}

/// The reported examples, each through the same check: refused, or decided like every
/// backend reading.
#[test]
fn the_reported_examples_are_refused_or_protected() {
    let setup = setup();
    let mut counts = Counts::default();
    for raw in [
        "/public/..;/private/x",
        "/public/%252e%252e/private/x",
        "/public/%c0%ae%c0%ae/private/x",
    ] {
        assert!(normalize(raw).is_err(), "{raw} must be refused");
    }
    let normal = normalize("/admin;x/users").expect("accepted");
    check(&setup, "/admin;x/users", &normal, &mut counts).unwrap();
    assert_eq!(
        counts.applied, 1,
        "the /admin rule applies to /admin;x/users"
    );
}
