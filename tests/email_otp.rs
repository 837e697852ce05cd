//! Email OTP, the second local factor, against the real test OP and a real SMTP server
//! (aiosmtpd, `tests/smtp/server.py`): the code is read from the server's mailbox. Covers the
//! first login, wrong, expired (Gatehouse's manual clock), replayed and foreign codes, resend
//! limits, SMTP AUTH over STARTTLS with a test CA, SMTP down, refusing and slow, an account
//! without a verified email, the JIT-off conflict (deny and skip) and step-up on `[[access]]`.

mod common;
#[path = "common/idp.rs"]
mod idp;
#[path = "common/login_env.rs"]
mod login_env;
#[path = "common/smtp.rs"]
mod smtp;

use idp::{form_fields, Browser};
use login_env::{echo_json, manual_login_env, LoginEnv};
use serde_json::json;
use smtp::{code_in, recipients, SmtpOptions, SmtpServer};
use std::time::Duration;

/// `[mfa]` with Email OTP required (TOTP off) and `[smtp]` to `port` in clear (loopback).
fn email_config(port: u16, mfa_extra: &str, smtp_extra: &str) -> String {
    format!(
        "[mfa]\ntotp = \"off\"\nemail_otp = \"required\"\n{mfa_extra}\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\n\
         from = \"Gatehouse <no-reply@example.com>\"\ntimeout = \"2s\"\n{smtp_extra}\n"
    )
}

/// Posts the form `form_id` on `page` with `more` fields; returns status, Location and body.
async fn post(
    browser: &Browser,
    env: &LoginEnv,
    page: &str,
    form_id: &str,
    more: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let (_, fields) = form_fields(page, form_id);
    let mut form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.extend_from_slice(more);
    let response = browser.post_form(&env.url("/oauth2/mfa"), &form).await;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, location, response.text().await.unwrap())
}

/// Signs in at the IdP as `user`; returns the browser and the page Gatehouse showed next.
async fn sign_in_as(env: &LoginEnv, user: &str, path: &str) -> (Browser, String) {
    let browser = Browser::new();
    let password = format!("{user}-pw");
    let journey = browser
        .follow(&env.url(path), Some((user, password.as_str())))
        .await;
    (browser, journey.body)
}

/// Asks for a code on the Email OTP page; returns the page with the code form.
async fn send_code(browser: &Browser, env: &LoginEnv, page: &str) -> String {
    assert!(page.contains("mfa-email-send-form"), "{page}");
    let (status, _, body) = post(browser, env, page, "mfa-email-send-form", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mfa-email-form"), "{body}");
    body
}

async fn challenges(env: &LoginEnv, result: &str) -> f64 {
    env.gh
        .metric(&format!(
            "gatehouse_mfa_challenges_total{{factor=\"email_otp\",result=\"{result}\"}}"
        ))
        .await
}

async fn sends(env: &LoginEnv, result: &str) -> f64 {
    env.gh
        .metric(&format!(
            "gatehouse_mfa_email_send_total{{result=\"{result}\"}}"
        ))
        .await
}

/// With Email OTP required, the first login mails a code to the verified address (a plain and
/// an HTML part naming the sign-in, no links) before any session exists; a wrong code is
/// refused and counted, the right one issues the session, and the same code replayed (the
/// pending login is gone) issues nothing.
#[tokio::test]
async fn a_first_login_with_email_otp_reaches_the_app_and_the_code_works_once() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let env = manual_login_env(json!({}), &email_config(mail.port, "", "")).await;
    let (browser, page) = sign_in_as(&env, "alice", "/private").await;
    assert!(
        browser
            .cookie_header(&env.url("/"))
            .is_none_or(|c| !c.contains("_gatehouse=")),
        "no session before the second factor"
    );
    assert!(page.contains("a***@example.com"), "{page}");
    let form = send_code(&browser, &env, &page).await;
    let message = mail.wait_message(1).await;
    assert_eq!(recipients(&message), "alice@example.com");
    let code = code_in(&message);
    assert_eq!(code.len(), 6, "{message}");
    assert!(
        message.contains("text/plain") && message.contains("text/html"),
        "{message}"
    );
    assert!(
        message.contains("Test IdP"),
        "the mail names the connection: {message}"
    );
    assert!(
        message.contains("127.0.0.1"),
        "the mail names the client address"
    );
    assert!(!message.contains("href"), "no links in the mail: {message}");
    assert_eq!(sends(&env, "sent").await, 1.0);

    let wrong = if code == "000000" { "000001" } else { "000000" };
    let (status, _, body) = post(&browser, &env, &form, "mfa-email-form", &[("code", wrong)]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("tries left"), "{body}");
    assert_eq!(challenges(&env, "failure").await, 1.0);

    let (status, location, _) =
        post(&browser, &env, &body, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!((status, location.as_deref()), (302, Some("/private")));
    let app = browser.get(&env.url("/private")).await;
    assert_eq!(app.status(), 200);
    let echo = echo_json(&app.text().await.unwrap());
    assert_eq!(echo["headers"]["x-auth-request-user"][0], "alice");
    assert_eq!(challenges(&env, "success").await, 1.0);
    let sum = env
        .gh
        .metric("gatehouse_mfa_email_send_duration_seconds_sum")
        .await;
    eprintln!(
        "send latency to the local SMTP server: {:.1} ms",
        sum * 1000.0
    );

    // The same code again, from a fresh browser holding only the old pending cookie's form.
    let replay = Browser::new();
    let (status, location, _) =
        post(&replay, &env, &body, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!(status, 302);
    assert_eq!(
        location.as_deref(),
        Some("/oauth2/start"),
        "no session from a replay"
    );
    assert!(replay.cookie_header(&env.url("/")).is_none());
}

/// A code expires after `email_otp_ttl` on Gatehouse's clock; a code sent for one pending
/// login never works for another (both are alice's).
#[tokio::test]
async fn expired_codes_and_codes_from_another_pending_login_are_refused() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let env = manual_login_env(json!({}), &email_config(mail.port, "", "")).await;
    let (first, page) = sign_in_as(&env, "alice", "/").await;
    let first_form = send_code(&first, &env, &page).await;
    let first_code = code_in(&mail.wait_message(1).await);
    let (second, page) = sign_in_as(&env, "alice", "/").await;
    let second_form = send_code(&second, &env, &page).await;
    let second_code = code_in(&mail.wait_message(2).await);
    if first_code != second_code {
        let (status, _, body) = post(
            &second,
            &env,
            &second_form,
            "mfa-email-form",
            &[("code", &first_code)],
        )
        .await;
        assert_eq!(status, 401, "another login's code: {body}");
    }
    env.gh.clock().advance(Duration::from_secs(300));
    let (status, _, body) = post(
        &first,
        &env,
        &first_form,
        "mfa-email-form",
        &[("code", &first_code)],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    assert_eq!(challenges(&env, "expired").await, 1.0);
}

/// A resend waits `email_otp_resend_after` and replaces the code; after
/// `email_otp_max_sends` no more codes go out for that login.
#[tokio::test]
async fn resends_are_limited_and_replace_the_previous_code() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let env = manual_login_env(
        json!({}),
        &email_config(mail.port, "email_otp_max_sends = 2", ""),
    )
    .await;
    let (browser, page) = sign_in_as(&env, "alice", "/").await;
    let form = send_code(&browser, &env, &page).await;
    let old = code_in(&mail.wait_message(1).await);
    let (status, _, body) = post(&browser, &env, &form, "mfa-email-resend-form", &[]).await;
    assert_eq!(status, 429, "too soon: {body}");
    assert_eq!(mail.messages().len(), 1);
    env.gh.clock().advance(Duration::from_secs(30));
    let (status, _, form) = post(&browser, &env, &body, "mfa-email-resend-form", &[]).await;
    assert_eq!(status, 200, "{form}");
    let new = code_in(&mail.wait_message(2).await);
    env.gh.clock().advance(Duration::from_secs(30));
    let (status, _, body) = post(&browser, &env, &form, "mfa-email-resend-form", &[]).await;
    assert_eq!(status, 429, "max_sends reached: {body}");
    assert!(body.contains("No more codes"), "{body}");
    assert_eq!(mail.messages().len(), 2);
    if old != new {
        let (status, _, _) = post(&browser, &env, &body, "mfa-email-form", &[("code", &old)]).await;
        assert_eq!(status, 401, "the replaced code no longer works");
    }
    let (status, location, _) =
        post(&browser, &env, &body, "mfa-email-form", &[("code", &new)]).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
}

/// Wrong emailed codes count toward the same lock-out as TOTP: after `max_failures` the
/// account is locked and even the right code is refused until the lock runs out.
#[tokio::test]
async fn wrong_emailed_codes_lock_the_account_like_totp() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let env = manual_login_env(json!({}), &email_config(mail.port, "max_failures = 2", "")).await;
    let (browser, page) = sign_in_as(&env, "alice", "/").await;
    let form = send_code(&browser, &env, &page).await;
    let code = code_in(&mail.wait_message(1).await);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let (status, _, body) = post(&browser, &env, &form, "mfa-email-form", &[("code", wrong)]).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = post(&browser, &env, &body, "mfa-email-form", &[("code", wrong)]).await;
    assert_eq!(status, 429, "the second wrong code locks");
    let (status, _, body) = post(&browser, &env, &body, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!(status, 429, "locked, even for the right code: {body}");
    assert!(challenges(&env, "locked").await >= 2.0);
    env.gh.clock().advance(Duration::from_secs(299));
    let (status, _, _) = post(&browser, &env, &form, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!(status, 429, "one second before the lock ends");
}

/// A test CA and a server certificate for 127.0.0.1 it signed, as PEM files in `dir`.
fn test_ca(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

/// SMTP AUTH over STARTTLS, trusting only a test CA (`ca_file`), delivers the code; the
/// password comes from `password_env`.
#[tokio::test]
async fn codes_go_through_smtp_auth_over_starttls_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let Some(mail) = SmtpServer::start(SmtpOptions {
        auth: Some(("gatehouse".into(), "smtp-pw".into())),
        tls: Some((cert, key)),
        ..Default::default()
    }) else {
        return;
    };
    std::env::set_var("GATEHOUSE_TEST_SMTP_PW", "smtp-pw");
    let config = format!(
        "[mfa]\ntotp = \"off\"\nemail_otp = \"required\"\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"starttls\"\n\
         from = \"no-reply@example.com\"\nusername = \"gatehouse\"\n\
         password_env = \"GATEHOUSE_TEST_SMTP_PW\"\nca_file = \"{ca}\"\n",
        port = mail.port
    );
    let env = manual_login_env(json!({}), &config).await;
    let (browser, page) = sign_in_as(&env, "alice", "/").await;
    let form = send_code(&browser, &env, &page).await;
    let code = code_in(&mail.wait_message(1).await);
    let (status, location, _) =
        post(&browser, &env, &form, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
}

/// SMTP down (nothing listening), refusing (550) or too slow (past `timeout`): a clear page,
/// the send counted by result, and no session.
#[tokio::test]
async fn an_smtp_server_that_is_down_refusing_or_slow_gives_a_clear_page_and_no_session() {
    let Some(refusing) = SmtpServer::start(SmtpOptions {
        refuse: true,
        ..Default::default()
    }) else {
        return;
    };
    let Some(slow) = SmtpServer::start(SmtpOptions {
        delay: Some(5.0),
        ..Default::default()
    }) else {
        return;
    };
    let dead = common::dead_port().port();
    for (port, result) in [
        (dead, "error"),
        (refusing.port, "refused"),
        (slow.port, "timeout"),
    ] {
        let env = manual_login_env(
            json!({}),
            &email_config(port, "", "").replace("timeout = \"2s\"", "timeout = \"1s\""),
        )
        .await;
        let (browser, page) = sign_in_as(&env, "alice", "/").await;
        let (status, _, body) = post(&browser, &env, &page, "mfa-email-send-form", &[]).await;
        assert_eq!(status, 503, "{result}: {body}");
        assert!(body.contains("could not send the code"), "{body}");
        assert_eq!(sends(&env, result).await, 1.0, "{result}");
        assert!(
            browser
                .cookie_header(&env.url("/"))
                .is_none_or(|c| !c.contains("_gatehouse=")),
            "no session"
        );
    }
}

/// An account whose email the IdP did not verify (bob) cannot get a code: a clear 403 page,
/// and nothing is mailed.
#[tokio::test]
async fn an_account_without_a_verified_email_cannot_use_email_otp() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let env = manual_login_env(json!({}), &email_config(mail.port, "", "")).await;
    let (_browser, page) = sign_in_as(&env, "bob", "/").await;
    assert!(page.contains("mfa-no-factor"), "{page}");
    assert!(page.contains("not verified"), "{page}");
    assert!(mail.messages().is_empty());
}

/// A JIT-off connection where Email OTP is required: `deny` refuses with the conflict page,
/// `skip` lets the user in without a second factor; no mail either way.
#[tokio::test]
async fn jit_off_with_email_otp_required_is_denied_or_skipped() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let deny = manual_login_env(
        json!({}),
        &format!("jit = false\n{}", email_config(mail.port, "", "")),
    )
    .await;
    let (_, page) = sign_in_as(&deny, "alice", "/").await;
    assert!(page.contains("cannot provide the second factor"), "{page}");
    assert_eq!(
        deny.gh
            .metric("gatehouse_mfa_conflicts_total{connection=\"test\"}")
            .await,
        1.0
    );
    let skip = manual_login_env(
        json!({}),
        &format!(
            "jit = false\n{}",
            email_config(mail.port, "when_no_local_account = \"skip\"", "")
        ),
    )
    .await;
    let (browser, _) = sign_in_as(&skip, "alice", "/").await;
    assert_eq!(browser.get(&skip.url("/")).await.status(), 200);
    assert!(mail.messages().is_empty());
}

/// Step-up: a session that signed in without a second factor (the connection's `mfa = "off"`)
/// is sent to the Email OTP page by an `[[access]]` rule with `mfa = "required"`, and reaches
/// the route after the emailed code.
#[tokio::test]
async fn an_access_rule_steps_up_with_email_otp() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let config = format!(
        "mfa = \"off\"\n[[access]]\npath = \"/admin\"\nmatch = \"prefix\"\nmfa = \"required\"\n{}",
        email_config(mail.port, "", "")
            .replace("email_otp = \"required\"", "email_otp = \"optional\"")
    );
    let env = manual_login_env(json!({}), &config).await;
    let (browser, _) = sign_in_as(&env, "alice", "/").await;
    assert_eq!(browser.get(&env.url("/")).await.status(), 200);
    let step = browser.get(&env.url("/admin")).await;
    assert_eq!(step.status(), 302);
    let location = step.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/oauth2/mfa?rd="), "{location}");
    let page = browser.get(&env.url(&location)).await.text().await.unwrap();
    let form = send_code(&browser, &env, &page).await;
    let code = code_in(&mail.wait_message(1).await);
    let (status, location, _) =
        post(&browser, &env, &form, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!((status, location.as_deref()), (302, Some("/admin")));
    assert_eq!(browser.get(&env.url("/admin")).await.status(), 200);
}

/// A user who can use both factors chooses: without TOTP enrolled the Email OTP page comes
/// first with a link to set up an app; `?factor=totp` shows the enrolment with a link back to
/// email. An enrolled user sees TOTP first (covered by tests/mfa.rs); the link is there too.
#[tokio::test]
async fn a_user_with_both_factors_can_choose_either() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let config = email_config(mail.port, "", "")
        .replace("totp = \"off\"", "totp = \"required\"")
        .replace("email_otp = \"required\"", "email_otp = \"optional\"");
    let env = manual_login_env(json!({}), &config).await;
    let (browser, page) = sign_in_as(&env, "alice", "/").await;
    assert!(page.contains("mfa-email-send-form"), "{page}");
    assert!(page.contains("id=\"mfa-use-totp\""), "{page}");
    let totp = browser
        .get(&env.url("/oauth2/mfa?factor=totp&rd=/"))
        .await
        .text()
        .await
        .unwrap();
    assert!(totp.contains("mfa-enrol-form"), "{totp}");
    assert!(totp.contains("id=\"mfa-use-email\""), "{totp}");
    let form = send_code(&browser, &env, &page).await;
    let code = code_in(&mail.wait_message(1).await);
    let (status, location, _) =
        post(&browser, &env, &form, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!((status, location.as_deref()), (302, Some("/")));
}

/// `gatehouse users mfa reset` (here through the admin API the CLI uses) voids the codes in
/// force for the account: the code mailed before the reset is refused.
#[tokio::test]
async fn an_mfa_reset_voids_the_codes_in_force() {
    let Some(mail) = SmtpServer::start(SmtpOptions::default()) else {
        return;
    };
    let config = format!(
        "{}[admin]\ntoken = \"email-otp-admin-token-0123456789\"\n",
        email_config(mail.port, "", "")
    );
    let env = manual_login_env(json!({}), &config).await;
    let (browser, page) = sign_in_as(&env, "alice", "/").await;
    let form = send_code(&browser, &env, &page).await;
    let code = code_in(&mail.wait_message(1).await);
    env.gh.clock().advance(Duration::from_secs(1));
    let reset = common::client()
        .post(env.gh.admin_url("/api/users"))
        .bearer_auth("email-otp-admin-token-0123456789")
        .json(&json!({"op": "mfa_reset", "user": "alice@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    let (status, _, body) = post(&browser, &env, &form, "mfa-email-form", &[("code", &code)]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no code waiting"), "{body}");
}
