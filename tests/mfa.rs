//! Local MFA (TOTP) against the real test OP: enrolment, verification, replay, lock-out and
//! unlock on Gatehouse's injectable clock, recovery codes, step-up on `/admin`, the JIT-off
//! conflict (`deny` and `skip`) and its `check-config` warning. Codes come from the tests'
//! own RFC 6238 implementation (`common/totp.rs`), never from Gatehouse.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;
#[path = "common/totp.rs"]
mod totp;

use common::client;
use idp::{form_fields, Browser};
use login_env::{echo_json, manual_login_env, LoginEnv};
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN_TOKEN: &str = "mfa-admin-token-0123456789";

fn extra(more: &str) -> String {
    format!("{more}\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")
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

fn now(env: &LoginEnv) -> u64 {
    env.gh.clock().now()
}

/// `gatehouse_mfa_challenges_total` for TOTP with this result; `recovery` reads the
/// successful recovery codes (`factor="recovery_code"`).
async fn metric(env: &LoginEnv, result: &str) -> f64 {
    let (factor, result) = match result {
        "recovery" => ("recovery_code", "success"),
        other => ("totp", other),
    };
    env.gh
        .metric(&format!(
            "gatehouse_mfa_challenges_total{{factor=\"{factor}\",result=\"{result}\"}}"
        ))
        .await
}

/// Posts `code` to the MFA form `form_id` on `page`; returns status, Location and body.
async fn submit(
    browser: &Browser,
    env: &LoginEnv,
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
    let response = browser.post_form(&env.url("/oauth2/mfa"), &form).await;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, location, response.text().await.unwrap())
}

/// Signs in at the IdP; returns the browser and the page Gatehouse showed next.
async fn sign_in_to(env: &LoginEnv, path: &str) -> (Browser, String) {
    let browser = Browser::new();
    let journey = browser
        .follow(&env.url(path), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 200, "{:?}", journey.hops);
    (browser, journey.body)
}

/// Enrols alice from an enrolment page: returns the base32 key, the recovery codes, the
/// continue link, and the code that was accepted.
async fn enrol(
    env: &LoginEnv,
    browser: &Browser,
    page: &str,
) -> (String, Vec<String>, String, String) {
    assert!(page.contains("Set up two-step sign-in"), "{page}");
    assert!(page.contains("<svg"), "the QR code is inline SVG");
    assert!(code_text(page, "otpauth-uri").starts_with("otpauth://totp/"));
    let key = code_text(page, "secret");
    let (status, _, body) = submit(browser, env, page, "mfa-enrol-form", "000000").await;
    assert_eq!(status, 401, "a wrong first code is refused: {body}");
    assert_eq!(
        code_text(&body, "secret"),
        key,
        "the same secret is shown again"
    );
    let accepted = totp::code(&key, now(env));
    let (status, _, body) = submit(browser, env, &body, "mfa-enrol-form", &accepted).await;
    assert_eq!(status, 200, "{body}");
    let codes: Vec<String> = body
        .split("<li><code>")
        .skip(1)
        .map(|c| c.split("</code>").next().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10, "{body}");
    let cont = body.split("id=\"continue\" href=\"").nth(1).unwrap();
    let target = idp::unescape_html(cont.split('"').next().unwrap());
    (key, codes, target, accepted)
}

/// The independent TOTP agrees with RFC 6238 appendix B (SHA1), so the codes below are right.
#[test]
fn the_test_totp_matches_the_rfc_6238_vectors() {
    let key = b"12345678901234567890";
    for (t, code) in [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ] {
        assert_eq!(totp::totp(key, t, 8), code, "T={t}");
    }
    assert_eq!(totp::base32_decode("GEZDGNBVGY3TQOJQ"), b"1234567890");
}

/// With TOTP required, the first login enrols (a wrong first code refused, the secret saved
/// only on a right one, ten recovery codes shown once) before any session exists; later
/// logins verify; a code is refused the second time (replay); a recovery code works once.
#[tokio::test]
async fn a_required_totp_is_enrolled_then_verified_and_codes_cannot_be_replayed() {
    let env = manual_login_env(json!({}), &extra("[mfa]\ntotp = \"required\"")).await;
    let (browser, page) = sign_in_to(&env, "/private").await;
    assert!(
        browser
            .cookie_header(&env.url("/"))
            .is_none_or(|c| !c.contains("_gatehouse=")),
        "no session before the second factor"
    );
    let (key, recovery, target, used) = enrol(&env, &browser, &page).await;
    assert_eq!(target, "/private");
    let app = browser.get(&env.url(&target)).await;
    assert_eq!(app.status(), 200);
    let echo = echo_json(&app.text().await.unwrap());
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice");
    assert_eq!(env.gh.metric("gatehouse_mfa_enrolments_total").await, 1.0);

    // The next login verifies. The code used at enrolment is a replay within its window.
    let (second, page) = sign_in_to(&env, "/").await;
    assert!(page.contains("mfa-verify-form"), "{page}");
    let (status, _, body) = submit(&second, &env, &page, "mfa-verify-form", &used).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("already used"), "{body}");
    assert_eq!(metric(&env, "replay").await, 1.0);
    env.gh.clock().advance(Duration::from_secs(30));
    let fresh = totp::code(&key, now(&env));
    let (status, location, _) = submit(&second, &env, &body, "mfa-verify-form", &fresh).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
    assert_eq!(second.get(&env.url("/")).await.status(), 200);
    assert_eq!(metric(&env, "success").await, 2.0);

    // A recovery code works once.
    let (third, page) = sign_in_to(&env, "/").await;
    let (status, _, body) = submit(&third, &env, &page, "mfa-verify-form", "12345").await;
    assert_eq!(status, 400, "not a code at all: not counted");
    let (status, location, _) = submit(&third, &env, &body, "mfa-verify-form", &recovery[0]).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
    assert_eq!(metric(&env, "recovery").await, 1.0);
    let (fourth, page) = sign_in_to(&env, "/").await;
    let (status, _, _) = submit(&fourth, &env, &page, "mfa-verify-form", &recovery[0]).await;
    assert_eq!(status, 401, "a recovery code works once");

    // The CLI's status and reset (through the admin API): after a reset, the user enrols again.
    let admin = |op: Value| {
        let url = env.gh.admin_url("/api/users");
        async move {
            client()
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&op)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let status = admin(json!({"op": "mfa_status", "user": "alice@example.com"})).await;
    assert_eq!(status["value"]["mfa"]["sealed_secret"], "[sealed]");
    assert_eq!(
        status["value"]["mfa"]["recovery_hashes"]
            .as_array()
            .unwrap()
            .len(),
        9
    );
    admin(json!({"op": "mfa_reset", "user": "alice@example.com"})).await;
    let (_, page) = sign_in_to(&env, "/").await;
    assert!(page.contains("Set up two-step sign-in"), "{page}");
}

/// Five wrong codes lock the account's second factor; while locked even the right code is
/// refused (429); once the lock has passed on Gatehouse's clock, the right code works.
#[tokio::test]
async fn five_wrong_codes_lock_the_user_out_until_the_lock_passes() {
    let env = manual_login_env(json!({}), &extra("[mfa]\ntotp = \"required\"")).await;
    let (browser, page) = sign_in_to(&env, "/").await;
    let (key, _, _, _) = enrol(&env, &browser, &page).await;
    let (second, mut page) = sign_in_to(&env, "/").await;
    for attempt in 1..=5 {
        let (status, _, body) = submit(&second, &env, &page, "mfa-verify-form", "000000").await;
        let expected = if attempt < 5 { 401 } else { 429 };
        assert_eq!(status, expected, "attempt {attempt}: {body}");
        if attempt < 5 {
            page = body;
        }
    }
    env.gh.clock().advance(Duration::from_secs(31));
    let (status, _, _) = submit(
        &second,
        &env,
        &page,
        "mfa-verify-form",
        &totp::code(&key, now(&env)),
    )
    .await;
    assert_eq!(status, 429, "locked: the right code is not even looked at");
    assert!(metric(&env, "locked").await >= 2.0);
    assert_eq!(metric(&env, "failure").await, 5.0);
    env.gh.clock().advance(Duration::from_secs(300));
    let (status, location, _) = submit(
        &second,
        &env,
        &page,
        "mfa-verify-form",
        &totp::code(&key, now(&env)),
    )
    .await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
}

/// Step-up: TOTP off in general, required on `/admin`. A session reaches `/` without it,
/// is sent to the TOTP form for `/admin` (an API client gets 401), and comes back to
/// `/admin` once the code is accepted.
#[tokio::test]
async fn a_session_without_mfa_steps_up_for_admin_and_comes_back_to_it() {
    let env = manual_login_env(
        json!({}),
        &extra("[[access]]\npath = \"/admin\"\nmatch = \"prefix\"\nmfa = \"required\""),
    )
    .await;
    let (browser, page) = sign_in_to(&env, "/").await;
    assert!(page.contains("\"headers\""), "no MFA for /: {page}");
    let cookie = browser.cookie_header(&env.url("/")).unwrap();
    let api = client()
        .get(env.url("/admin/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let step_up = browser.get(&env.url("/admin/users?x=1")).await;
    assert_eq!(step_up.status(), 302);
    let location = step_up.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/oauth2/mfa?rd="), "{location}");
    let journey = browser.follow(&env.url(&location), None).await;
    let (_, _, target, _) = enrol(&env, &browser, &journey.body).await;
    assert_eq!(target, "/admin/users?x=1");
    let admin = browser.get(&env.url(&target)).await;
    assert_eq!(admin.status(), 200);
    let api = client()
        .get(env.url("/admin/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200, "the session itself now records MFA");
}

/// A JIT-off connection where TOTP is required: `deny` gives a 403 page naming the problem
/// and the conflict metric; `skip` lets the user in with the claims headers.
#[tokio::test]
async fn a_jit_off_connection_is_denied_or_skipped_as_configured() {
    let denied =
        manual_login_env(json!({}), &extra("jit = false\n[mfa]\ntotp = \"required\"")).await;
    let journey = Browser::new()
        .follow(&denied.url("/"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 403);
    assert!(journey.body.contains("second factor"), "{}", journey.body);
    let conflicts = "gatehouse_mfa_conflicts_total{connection=\"test\"}";
    assert_eq!(denied.gh.metric(conflicts).await, 1.0);

    let skipped = manual_login_env(
        json!({}),
        &extra("jit = false\n[mfa]\ntotp = \"required\"\nwhen_no_local_account = \"skip\""),
    )
    .await;
    let journey = Browser::new()
        .follow(&skipped.url("/"), Some(("alice", "alice-pw")))
        .await;
    assert_eq!(journey.status, 200, "{}", journey.body);
    let echo = echo_json(&journey.body);
    assert_eq!(
        echo["headers"]["x-auth-request-email"][0],
        "alice@example.com"
    );
    assert!(echo["headers"].get("x-gatehouse-user-id").is_none());
}

/// `check-config` warns about each JIT-off connection that can reach a route requiring TOTP,
/// naming the connection, the route and the fix, and stays silent for the fixed config.
#[test]
fn check_config_warns_about_the_jit_off_conflict_and_not_about_the_fixed_config() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"
[login]
external_url = "https://app.example.com"
[[upstreams]]
url = "http://127.0.0.1:1"
[[access]]
path = "/admin"
match = "prefix"
mfa = "required"
[[connections]]
id = "partners"
issuer = "https://idp.example.com"
client_id = "c"
client_secret = "s"
jit = false
{extra}
"#
            ),
        )
        .unwrap();
        path
    };
    let run = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["check-config", "--config"])
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&write("conflict.toml", ""));
    assert_eq!(
        (code, stdout.trim()),
        (Some(0), "ok"),
        "a warning, not an error"
    );
    assert!(stderr.starts_with("warning: "), "{stderr}");
    assert!(
        stderr.contains("`partners`") && stderr.contains("/admin"),
        "{stderr}"
    );
    assert!(
        stderr.contains("when_no_local_account = \"skip\""),
        "the fix: {stderr}"
    );
    let (code, _, stderr) = run(&write(
        "fixed.toml",
        "[mfa]\nwhen_no_local_account = \"skip\"",
    ));
    assert_eq!(code, Some(0));
    assert!(stderr.is_empty(), "{stderr}");
}

/// The pending-MFA cookie and the form are tamper-proof: a forged cookie starts over, a
/// missing or foreign CSRF token is refused, and the pending cookie cannot stand in for a
/// session cookie.
#[tokio::test]
async fn forged_pending_cookies_and_csrf_tokens_are_refused() {
    let env = manual_login_env(json!({}), &extra("[mfa]\ntotp = \"required\"")).await;
    let forged = client()
        .get(env.url("/oauth2/mfa"))
        .header("cookie", "_gatehouse_mfa=AAAAforgedvalue")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 302);
    assert_eq!(forged.headers()["location"], "/oauth2/start");

    let (browser, page) = sign_in_to(&env, "/").await;
    let key = code_text(&page, "secret");
    let (_, fields) = form_fields(&page, "mfa-enrol-form");
    let code = totp::code(&key, now(&env));
    let mut without_csrf: Vec<(&str, &str)> = fields
        .iter()
        .filter(|(k, _)| k != "csrf")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    without_csrf.push(("code", &code));
    let refused = browser
        .post_form(&env.url("/oauth2/mfa"), &without_csrf)
        .await;
    assert_eq!(refused.status(), 403);
    // Another login's token does not fit this one.
    let (_, other_page) = sign_in_to(&env, "/").await;
    let (_, other_fields) = form_fields(&other_page, "mfa-enrol-form");
    let foreign = other_fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .unwrap()
        .1
        .clone();
    let mut with_foreign: Vec<(&str, &str)> = without_csrf.clone();
    with_foreign.push(("csrf", &foreign));
    let refused = browser
        .post_form(&env.url("/oauth2/mfa"), &with_foreign)
        .await;
    assert_eq!(refused.status(), 403);

    let pending = browser
        .cookie_header(&env.url("/oauth2/mfa"))
        .unwrap()
        .split("; ")
        .find_map(|c| c.strip_prefix("_gatehouse_mfa=").map(str::to_string))
        .expect("the pending-MFA cookie");
    let swapped = client()
        .get(env.url("/api"))
        .header("accept", "application/json")
        .header("cookie", format!("_gatehouse={pending}"))
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status(), 401, "a pending login is not a session");
    let rejected = "gatehouse_session_rejected_total{reason=\"forged\"}";
    assert_eq!(env.gh.metric_reaching(rejected, 1.0).await, 1.0);
}

/// A login waiting for its second factor waits ten minutes on Gatehouse's clock: one second
/// before, its page still shows; at the limit it is gone and the browser is sent to sign in
/// again. The clock is advanced, never slept on.
#[tokio::test]
async fn a_pending_second_factor_login_expires_on_gatehouses_clock() {
    let env = manual_login_env(json!({}), &extra("[mfa]\ntotp = \"required\"")).await;
    let (browser, page) = sign_in_to(&env, "/").await;
    assert!(page.contains("Set up two-step sign-in"), "{page}");
    env.gh.clock().advance(Duration::from_secs(599));
    let waiting = browser.get(&env.url("/oauth2/mfa")).await;
    assert_eq!(waiting.status(), 200, "one second before");
    let body = waiting.text().await.unwrap();
    assert!(body.contains("Set up two-step sign-in"), "{body}");
    env.gh.clock().advance(Duration::from_secs(1));
    let gone = browser.get(&env.url("/oauth2/mfa")).await;
    assert_eq!(gone.status(), 302, "at the limit");
    assert_eq!(gone.headers()["location"], "/oauth2/start");
}
