//! The second factor across two Gatehouse replicas on one real PostgreSQL database (a fresh
//! database per test; see tests/common/postgres.rs): the pending login, the TOTP replay guard
//! and the failure lock-out hold when the code page and the POST reach different replicas.
//! Both replicas read one manual clock (moved instead of sleeping); browsers keep cookies per
//! host, not per port, so one browser's cookies reach both replicas, as behind a load
//! balancer. Codes come from the tests' own RFC 6238 implementation (`common/totp.rs`).

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/replica_pair.rs"]
mod replica_pair;
#[path = "common/smtp.rs"]
mod smtp;
#[path = "common/totp.rs"]
mod totp;

use std::sync::Arc;
use std::time::Duration;

use common::postgres as pg;
use common::Harness;
use gatehouse::clock::Clock;
use idp::{form_fields, Browser};
use replica_pair::{start_pair, PairConfig, ReplicaPair};

/// Both replicas' clock.
trait Steps {
    fn now(&self) -> u64;
    /// Moves both replicas' clock on to the next TOTP step.
    fn next_step(&self);
}

impl Steps for ReplicaPair {
    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn next_step(&self) {
        self.clock.advance(Duration::from_secs(30));
    }
}

/// Two replicas with TOTP required, sharing a fresh database on one manual clock, or `None`
/// (skipped) without PostgreSQL outside CI.
async fn replicas() -> Option<ReplicaPair> {
    replicas_with("[mfa]\ntotp = \"required\"").await
}

/// Two replicas with this `[mfa]` (and `[smtp]`) config, on one manual clock.
async fn replicas_with(mfa: &str) -> Option<ReplicaPair> {
    let pair = PairConfig {
        extra: mfa,
        clock: Clock::manual_from_now(),
        ..PairConfig::default()
    };
    Some(start_pair(pg::fresh_database()?, pair).await)
}

/// The text of `<code id="{id}">` in a page.
fn code_text(html: &str, id: &str) -> String {
    let start = html
        .find(&format!("<code id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let open = start + html[start..].find('>').unwrap() + 1;
    let close = open + html[open..].find("</code>").unwrap();
    idp::unescape_html(&html[open..close])
}

/// Signs alice in at replica `at` in a fresh browser; returns it and the MFA page shown there.
async fn sign_in_at(at: &Harness) -> (Browser, String) {
    let browser = Browser::new();
    let journey = browser
        .follow(&at.url("/"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    (browser, journey.body)
}

/// Posts `code` in the form `form_id` of `page` to replica `at`; returns status, Location
/// and body.
async fn submit(
    browser: &Browser,
    at: &Harness,
    page: &str,
    form_id: &str,
    code: &str,
) -> (u16, Option<String>, String) {
    let (_, fields) = form_fields(page, form_id);
    let mut form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.push(("code", code));
    let response = browser.post_form(&at.url("/oauth2/mfa"), &form).await;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, location, response.text().await.unwrap())
}

/// Enrols alice: the enrolment page was shown at one replica, the codes go to `post_at`.
/// Returns the base32 key, the code accepted, and the page's "continue" target.
async fn enrol_at(
    r: &ReplicaPair,
    browser: &Browser,
    page: &str,
    post_at: &Harness,
) -> (String, String, String) {
    assert!(page.contains("Set up two-step sign-in"), "{page}");
    let key = code_text(page, "secret");
    let (status, _, body) = submit(browser, post_at, page, "mfa-enrol-form", "000000").await;
    assert_eq!(status, 401, "a wrong first code is refused: {body}");
    let accepted = totp::code(&key, r.now());
    let (status, _, body) = submit(browser, post_at, &body, "mfa-enrol-form", &accepted).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<li><code>"), "recovery codes shown: {body}");
    let cont = body.split("id=\"continue\" href=\"").nth(1).unwrap();
    let target = idp::unescape_html(cont.split('"').next().unwrap());
    (key, accepted, target)
}

/// How many rows of `pending_logins` hold pending logins (not email codes).
fn pending_rows(r: &ReplicaPair) -> u64 {
    pg::psql(
        &r.url,
        "SELECT count(*) FROM pending_logins WHERE id LIKE 'login:%'",
    )
    .trim()
    .parse()
    .unwrap()
}

/// TOTP enrolment and verification split over the replicas: the enrolment page is shown at
/// A and its codes are posted to B, which finishes the login A held back (the session then
/// works at A); a later login's code page is shown at B and its code posted to A.
#[tokio::test]
async fn a_code_page_shown_at_one_replica_is_answered_at_the_other() {
    let r = or_skip!(replicas().await);
    let (browser, page) = sign_in_at(&r.a).await;
    assert_eq!(pending_rows(&r), 1, "the held login is in the shared store");
    let (key, _, target) = enrol_at(&r, &browser, &page, &r.b).await;
    assert_eq!(target, "/");
    assert_eq!(pending_rows(&r), 0, "finished: taken out of the store");
    assert_eq!(browser.get(&r.a.url("/")).await.status(), 200);
    assert_eq!(browser.get(&r.b.url("/")).await.status(), 200);

    let (second, page) = sign_in_at(&r.b).await;
    assert!(page.contains("mfa-verify-form"), "{page}");
    r.next_step();
    let (status, location, body) = submit(
        &second,
        &r.a,
        &page,
        "mfa-verify-form",
        &totp::code(&key, r.now()),
    )
    .await;
    assert_eq!((status, location.as_deref()), (302, Some("/")), "{body}");
    assert_eq!(second.get(&r.b.url("/")).await.status(), 200);
}

/// A TOTP code accepted at replica A is a replay at replica B (the guard is in the shared
/// account record); B accepts the next step's code.
#[tokio::test]
async fn a_code_accepted_at_one_replica_is_refused_as_a_replay_at_the_other() {
    let r = or_skip!(replicas().await);
    let (browser, page) = sign_in_at(&r.a).await;
    let (key, _, _) = enrol_at(&r, &browser, &page, &r.a).await;
    r.next_step();
    let code = totp::code(&key, r.now());
    let (first, page) = sign_in_at(&r.a).await;
    let (status, _, body) = submit(&first, &r.a, &page, "mfa-verify-form", &code).await;
    assert_eq!(status, 302, "accepted at A: {body}");

    let (second, page) = sign_in_at(&r.b).await;
    let (status, _, body) = submit(&second, &r.b, &page, "mfa-verify-form", &code).await;
    assert_eq!(status, 401, "the same code at B: {body}");
    assert!(body.contains("already used"), "{body}");
    r.next_step();
    let fresh = totp::code(&key, r.now());
    let (status, location, _) = submit(&second, &r.b, &body, "mfa-verify-form", &fresh).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
}

/// Wrong codes split over both replicas count on one account: with `max_failures = 5`, the
/// fifth wrong code locks it whichever replica takes it, and then both replicas refuse even
/// the right code (429) until the lock has passed.
#[tokio::test]
async fn wrong_codes_split_over_both_replicas_lock_the_account_after_max_failures() {
    let r = or_skip!(replicas().await);
    let (browser, page) = sign_in_at(&r.a).await;
    let (key, _, _) = enrol_at(&r, &browser, &page, &r.a).await;
    let (second, mut page) = sign_in_at(&r.a).await;
    let replicas = [&r.a, &r.b];
    for attempt in 1..=5 {
        let at = replicas[attempt % 2];
        let (status, _, body) = submit(&second, at, &page, "mfa-verify-form", "000000").await;
        let expected = if attempt < 5 { 401 } else { 429 };
        assert_eq!(status, expected, "attempt {attempt}: {body}");
        if attempt < 5 {
            assert!(
                body.contains(&format!("{} tries left", 5 - attempt)),
                "attempt {attempt} counted on the shared account: {body}"
            );
            page = body;
        }
    }
    r.next_step();
    for at in replicas {
        let code = totp::code(&key, r.now());
        let (status, _, _) = submit(&second, at, &page, "mfa-verify-form", &code).await;
        assert_eq!(status, 429, "locked at {}", at.url(""));
    }
    r.clock.advance(Duration::from_secs(300));
    let code = totp::code(&key, r.now());
    let (status, location, _) = submit(&second, &r.b, &page, "mfa-verify-form", &code).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
}

/// A pending login is finished once: after its code is accepted at A, the same pending cookie
/// with a new valid code at B is sent to sign in again, and no session is issued.
#[tokio::test]
async fn a_pending_login_finished_at_one_replica_cannot_be_finished_again_at_the_other() {
    let r = or_skip!(replicas().await);
    let (browser, page) = sign_in_at(&r.a).await;
    let (key, _, _) = enrol_at(&r, &browser, &page, &r.a).await;

    let (first, page) = sign_in_at(&r.a).await;
    let copied = first
        .cookie_header(&r.a.url("/oauth2/mfa"))
        .expect("the pending cookie");
    assert!(copied.contains("_mfa="), "{copied}");
    r.next_step();
    let code = totp::code(&key, r.now());
    let (status, _, _) = submit(&first, &r.a, &page, "mfa-verify-form", &code).await;
    assert_eq!(status, 302, "finished at A");

    // Another browser with a copy of the pending cookie, and a fresh code, at B.
    let thief = Browser::new();
    for cookie in copied.split("; ") {
        thief.add_cookie(cookie, &r.b.url("/oauth2/mfa"));
    }
    r.next_step();
    let fresh = totp::code(&key, r.now());
    let (status, location, body) = submit(&thief, &r.b, &page, "mfa-verify-form", &fresh).await;
    assert_eq!(
        (status, location.as_deref()),
        (302, Some("/oauth2/start")),
        "{body}"
    );
    assert_eq!(thief.get(&r.b.url("/")).await.status(), 302, "no session");
    assert_eq!(pending_rows(&r), 0);
}

/// Of many replicas taking the same pending record at once, exactly one gets it (`DELETE ...
/// RETURNING`); an expired record is never handed out, and pruning removes it.
#[test]
fn a_pending_record_is_taken_exactly_once_when_replicas_race() {
    let url = or_skip!(pg::fresh_database());
    let options = gatehouse::store::postgres::PgOptions {
        url: url.clone(),
        pool_size: 4,
        auto_migrate: true,
        acquire_timeout: Duration::from_secs(5),
        offline_grace: Duration::from_secs(30),
    };
    let stores: Vec<Arc<gatehouse::store::Store>> = (0..2)
        .map(|_| Arc::new(gatehouse::store::Store::open_postgres(&options).unwrap()))
        .collect();
    let now = 1_800_000_000;
    for round in 0..5 {
        let id = format!("login:race-{round}");
        stores[0].put_pending(&id, b"sealed", now + 600).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let takers: Vec<_> = (0..8)
            .map(|i| {
                let (store, id, barrier) = (stores[i % 2].clone(), id.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.take_pending(&id, now).unwrap()
                })
            })
            .collect();
        let got: Vec<_> = takers
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(got, vec![b"sealed".to_vec()], "round {round}");
    }

    stores[0].put_pending("login:old", b"x", now).unwrap();
    assert_eq!(stores[1].pending("login:old", now).unwrap(), None);
    assert_eq!(stores[1].prune_pending(now).unwrap(), 1);
    assert_eq!(
        pg::psql(&url, "SELECT count(*) FROM pending_logins").trim(),
        "0"
    );
    stores[0].put_pending("login:late", b"x", now).unwrap();
    assert_eq!(stores[1].take_pending("login:late", now).unwrap(), None);
}

/// Email OTP across replicas: the code is sent from replica B for a login replica A held
/// back, a wrong code at A counts, the right code finishes the login at B; the code (kept
/// sealed in the shared store) is gone with the login.
#[tokio::test]
async fn an_email_code_sent_at_one_replica_is_checked_at_the_other() {
    let Some(mail) = smtp::SmtpServer::start(smtp::SmtpOptions::default()) else {
        return;
    };
    let mfa = format!(
        "[mfa]\ntotp = \"off\"\nemail_otp = \"required\"\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\
         from = \"Gatehouse <no-reply@example.com>\"\ntimeout = \"2s\"\n",
        mail.port
    );
    let r = or_skip!(replicas_with(&mfa).await);
    let (browser, page) = sign_in_at(&r.a).await;
    assert!(page.contains("mfa-email-send-form"), "{page}");
    let (_, fields) = form_fields(&page, "mfa-email-send-form");
    let form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sent = browser.post_form(&r.b.url("/oauth2/mfa"), &form).await;
    assert_eq!(sent.status(), 200);
    let page = sent.text().await.unwrap();
    assert!(page.contains("mfa-email-form"), "{page}");
    let code = smtp::code_in(&mail.wait_message(1).await);
    let rows = |kind: &str| {
        pg::psql(
            &r.url,
            &format!("SELECT count(*) FROM pending_logins WHERE id LIKE '{kind}:%'"),
        )
        .trim()
        .to_string()
    };
    assert_eq!(rows("email"), "1", "the code is in the shared store");
    let stored = pg::psql(
        &r.url,
        "SELECT encode(record, 'escape') FROM pending_logins WHERE id LIKE 'email:%'",
    );
    assert!(!stored.contains("alice"), "sealed: {stored}");

    let wrong = if code == "000000" { "000001" } else { "000000" };
    let (status, _, body) = submit(&browser, &r.a, &page, "mfa-email-form", wrong).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("4 tries left"), "{body}");
    let (status, location, body) = submit(&browser, &r.b, &body, "mfa-email-form", &code).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")), "{body}");
    assert_eq!(browser.get(&r.a.url("/")).await.status(), 200);
    assert_eq!((rows("email"), rows("login")), ("0".into(), "0".into()));
}

/// The database stops while a login waits for its code: the code posted meanwhile gets a 503
/// page and the login is kept (not "start over", its cookie not cleared); once the database
/// is back, the same code finishes the login at the other replica.
#[tokio::test]
async fn a_code_posted_while_the_database_is_down_gets_503_and_the_login_waits_for_its_return() {
    let server = or_skip!(pg::throwaway());
    let pair = PairConfig {
        extra: "[mfa]\ntotp = \"required\"",
        clock: Clock::manual_from_now(),
        ..PairConfig::default()
    };
    let r = start_pair(server.create_database(), pair).await;
    let (browser, page) = sign_in_at(&r.a).await;
    let (key, _, _) = enrol_at(&r, &browser, &page, &r.a).await;
    r.next_step();
    let (second, page) = sign_in_at(&r.b).await;
    assert!(page.contains("mfa-verify-form"), "{page}");
    let code = totp::code(&key, r.now());

    server.stop();
    let (status, location, body) = submit(&second, &r.a, &page, "mfa-verify-form", &code).await;
    assert_eq!(
        (status, location.as_deref()),
        (503, None),
        "a store that does not answer is not 'nothing waiting': {body}"
    );
    server.start();
    let mut outcome = (503, None, String::new());
    for _ in 0..200 {
        outcome = submit(&second, &r.a, &page, "mfa-verify-form", &code).await;
        if outcome.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, location, body) = outcome;
    assert_eq!(
        (status, location.as_deref()),
        (302, Some("/")),
        "the kept login finishes once the database is back: {body}"
    );
    assert_eq!(second.get(&r.b.url("/")).await.status(), 200);
}
