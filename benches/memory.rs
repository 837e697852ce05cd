//! Memory per live session: makes 10k and then 100k sessions live (a typical JIT identity with
//! groups, roles and two attributes, and IdP tokens of a typical size), as logins do, and
//! reports the heap they hold (counted by this bench's global allocator, exact) and the growth
//! of the process's resident set (from /proc, what an operator sees), per session. Sessions
//! are idle: no request has built their header cache or signed header yet.
//!
//! The store is not involved: a live session's memory is the in-memory map; its record is on
//! disk, and so are its IdP tokens (memory keeps only when to refresh them; they are read from
//! the store at refresh and sign-out). A config that forwards tokens to the app keeps them in
//! memory too, for sessions in use only: not measured here (idle sessions).
//! Run with `cargo bench --bench memory` (prints a table; no criterion, no timing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use gatehouse::auth::session::Sessions;
use gatehouse::clock::Clock;
use gatehouse::identity::Identity;
use gatehouse::seal::Sealer;
use gatehouse::store::sessions::Tokens;
use gatehouse::store::Store;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn heap() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

const CONFIG: &str = r#"
[[upstreams]]
url = "http://127.0.0.1:8080"
[[connections]]
id = "corp"
issuer = "https://idp.example.com"
client_id = "gatehouse"
client_secret = "bench-secret"
"#;

/// What a JIT login leaves in a session: user `n` with a local account.
fn identity(n: usize) -> Identity {
    let mut id = Identity::new("corp", &format!("248289761{n:09}"));
    id.user_id = Some(format!("u-{n:016x}"));
    id.username = Some(format!("user{n}"));
    id.email = Some(format!("user{n}@example.com"));
    id.email_verified = true;
    id.name = Some(format!("User Number {n}"));
    id.groups = vec!["staff".into(), "engineering".into()];
    id.roles = vec!["editor".into()];
    id.attributes.insert("department".into(), "R&D".into());
    id.attributes.insert("cost_center".into(), "CC-4711".into());
    id
}

/// IdP tokens of a typical size (an RS256 ID token, a JWT access token, a refresh token).
fn tokens() -> Tokens {
    Tokens {
        id_token: Some("e".repeat(900)),
        access_token: Some("a".repeat(800)),
        refresh_token: Some("r".repeat(64)),
        access_expires_at: Some(Clock::system().now() + 300),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"memory".contains(a.as_str()))
    {
        return;
    }
    let config = gatehouse::config::parse(CONFIG).expect("bench config");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let sessions = Sessions::new(
        config.session.clone(),
        Sealer::new(vec![[9; 32]]).expect("sealer"),
        store,
        Clock::system(),
    )
    .expect("sessions");
    println!("| live sessions | heap per session | RSS growth per session |");
    println!("|---:|---:|---:|");
    let mut made = 0;
    for target in [10_000usize, 100_000] {
        let (heap_before, rss_before, before) = (heap(), rss(), made);
        while made < target {
            let pending = sessions.prepare(identity(made), Some(format!("idp-{made}")), tokens());
            drop(sessions.activate(pending));
            made += 1;
        }
        let n = (made - before) as isize;
        println!(
            "| {made} | {} B | {} B |",
            (heap() - heap_before) / n,
            (rss() - rss_before) / n
        );
    }
    assert_eq!(sessions.active(), made);
}
