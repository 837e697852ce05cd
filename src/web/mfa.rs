//! `/oauth2/mfa`: the second-factor pages (TOTP, and Email OTP: `?factor=email`, the send and
//! resend buttons, the emailed-code form). A login that needs its second factor arrives here with the
//! pending-MFA cookie (its session is not issued yet); a session that reached a route needing
//! TOTP arrives with `?rd=` (step-up). GET shows the enrolment page (QR code, key, first code)
//! or the code form; POST (CSRF-checked) confirms or verifies, then issues the session or marks
//! it, and sends the browser on to `rd`. Every store change is one write transaction on the
//! blocking pool; every attempt is counted in `gatehouse_mfa_challenges_total`.

use crate::metrics::{MfaFactor, MfaResult, StoreOp};
use std::sync::Arc;

use http::header::SET_COOKIE;
use http::StatusCode;
use pingora::proxy::Session;

use crate::auth::second_factor::{EmailRefusal, EmailSendFailure};
use crate::mfa::email::{Mail, SendRefusal};
use crate::mfa::gate::{Waiting, PENDING_TTL};
use crate::mfa::policy::factors;
use crate::mfa::{EnrolError, Enrolment, EnrolmentStart, FailureOutcome, MfaRefusal, WrongCode};
use maud::{html, Markup, PreEscaped};

use super::endpoints::safe_rd;
use super::forms::{param, read_form};
use super::paths::{self, MFA};
use super::respond::{html_page, redirect};
use super::templates::{self, Theme};
use crate::auth::session::{LiveSession, Lookup};
use crate::auth::AuthView;
use crate::store::StoreError;

pub const CONFLICT_MESSAGE: &str = "This sign-in method cannot provide the second factor this \
     page requires: it keeps no local account to hold one. Sign in with a method that does.";

fn pending_cookie_name(auth: &AuthView) -> String {
    format!("{}_mfa", auth.sessions.config().cookie_name)
}

/// The `Set-Cookie` value of the pending-MFA cookie (short-lived, only sent to `/oauth2/mfa`).
pub fn pending_cookie(auth: &AuthView, sealed: &str) -> String {
    auth.sessions
        .set_cookie_header(&pending_cookie_name(auth), sealed, Some(MFA), PENDING_TTL)
}

fn clear_pending_cookie(auth: &AuthView) -> String {
    auth.sessions
        .set_cookie_header(&pending_cookie_name(auth), "", Some(MFA), 0)
}

/// Links to the connections whose users have local accounts (JIT), for the conflict page.
pub fn local_sign_ins(auth: &AuthView, rd: &str) -> Markup {
    let local: Vec<_> = auth
        .settings
        .providers
        .iter()
        .filter(|p| p.connection.jit)
        .collect();
    html! {
        @for p in &local {
            (templates::sign_in_button(
                None,
                &paths::start_link(Some(&p.connection.id), rd),
                &p.connection.display_name,
            ))
        }
        @if local.is_empty() {
            (templates::para("No sign-in method here keeps local accounts; ask an administrator."))
        }
    }
}

/// The answer where TOTP is required but the user's connection keeps no local account
/// (`when_no_local_account = "deny"`): 403, a page naming the sign-ins that can (`rd` to come
/// back to), or JSON for API clients.
pub async fn conflict(
    auth: &AuthView,
    session: &mut Session,
    rd: &str,
    request_id: &str,
    browser: bool,
) -> pingora::Result<()> {
    if !browser {
        let (kind, body) = super::respond::error_body(
            &Theme::of(session),
            StatusCode::FORBIDDEN,
            CONFLICT_MESSAGE,
            request_id,
            false,
        );
        return super::respond::send(session, StatusCode::FORBIDDEN, kind, body, &[]).await;
    }
    let body = html! {
        (templates::para(CONFLICT_MESSAGE))
        (local_sign_ins(auth, rd))
    };
    html_page(
        session,
        StatusCode::FORBIDDEN,
        "Another sign-in is needed",
        body,
        vec![],
    )
    .await
}

/// Who is at the MFA step.
enum Context {
    /// A login waiting for its second factor.
    Pending(Waiting),
    /// A session stepping up for a route that requires TOTP.
    StepUp {
        live: Arc<LiveSession>,
        user_id: String,
        username: String,
        rd: String,
    },
}

impl Context {
    /// What the CSRF token is bound to.
    fn id(&self) -> &str {
        match self {
            Context::Pending(w) => &w.id,
            Context::StepUp { live, .. } => &live.sid,
        }
    }

    fn user(&self) -> (&str, &str) {
        match self {
            Context::Pending(w) => (&w.user_id, &w.username),
            Context::StepUp {
                user_id, username, ..
            } => (user_id, username),
        }
    }

    fn rd(&self) -> &str {
        match self {
            Context::Pending(w) => &w.rd,
            Context::StepUp { rd, .. } => rd,
        }
    }
}

/// What the code page is for: a login waiting for its second factor, or a step-up of the
/// live session. A shared store that does not answer is an `Err` (the pending login is kept
/// for when it is back).
async fn context(
    auth: &AuthView,
    session: &Session,
    rd: Option<&str>,
) -> Result<Option<Context>, StoreError> {
    let headers = &session.req_header().headers;
    let name = pending_cookie_name(auth);
    // A login (or session) whose connection a config reload removed has nothing to finish.
    let candidates: Vec<String> = crate::auth::session::request_cookies(headers)
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .collect();
    let mut pending = None;
    for value in &candidates {
        if let Some(waiting) = auth.mfa.peek(value).await? {
            pending = Some(waiting);
            break;
        }
    }
    let pending = pending.filter(|w| auth.provider(&w.connection).is_some());
    if let Some(waiting) = pending {
        return Ok(Some(Context::Pending(waiting)));
    }
    let Lookup::Live(live) = auth.sessions.lookup(headers) else {
        return Ok(None);
    };
    if auth.provider(&live.identity.connection).is_none() {
        return Ok(None);
    }
    let Some(user_id) = live.identity.user_id.clone() else {
        return Ok(None);
    };
    let username = live
        .identity
        .username
        .clone()
        .unwrap_or_else(|| user_id.clone());
    Ok(Some(Context::StepUp {
        rd: safe_rd(auth, session, rd),
        live,
        user_id,
        username,
    }))
}

/// Serves `/oauth2/mfa`.
pub async fn handle(
    auth: &AuthView,
    session: &mut Session,
    pairs: &[(String, String)],
    request_id: &str,
) -> pingora::Result<()> {
    let post = session.req_header().method == http::Method::POST;
    let form = if post {
        read_form(session).await?
    } else {
        pairs.to_vec()
    };
    let ctx = match context(auth, session, param(&form, "rd")).await {
        Ok(Some(ctx)) => ctx,
        // Nothing to verify: start over.
        Ok(None) => {
            return redirect(session, paths::START, vec![clear_pending_cookie(auth)]).await;
        }
        // The pending login may be there: keep its cookie and say to try again.
        Err(e) => return store_failure(auth, session, e).await,
    };
    if let Context::StepUp { live, rd, .. } = &ctx {
        if live.mfa_done_at().is_some() {
            return redirect(session, rd, vec![]).await;
        }
    }
    if !post {
        return show_factor(
            auth,
            session,
            &ctx,
            param(&form, "factor"),
            None,
            StatusCode::OK,
        )
        .await;
    }
    let token_ok = param(&form, "csrf").is_some_and(|t| auth.mfa.csrf_ok(t, ctx.id()));
    if !token_ok {
        tracing::warn!(request_id, "MFA form refused: bad or missing CSRF token");
        return html_page(
            session,
            StatusCode::FORBIDDEN,
            "Form expired",
            html! {
                p { "This form is no longer valid. " a href=(paths::START) { "Sign in again" } "." }
            },
            vec![],
        )
        .await;
    }
    let code = param(&form, "code").unwrap_or("").trim().to_string();
    if param(&form, "action") == Some("email_send") {
        return email_send(auth, session, &ctx, request_id).await;
    }
    if param(&form, "factor") == Some("email") {
        return email_verify(auth, session, &ctx, &code, request_id).await;
    }
    match param(&form, "enrolment") {
        Some(pending) => confirm(auth, session, &ctx, pending, &code, request_id).await,
        None => verify(auth, session, &ctx, &code, request_id).await,
    }
}

/// The enrolment page or the TOTP code form, with an optional message.
async fn show(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    show_factor(auth, session, ctx, Some("totp"), message, status).await
}

/// The page for the factor asked for (`?factor=totp|email`), else the default one: TOTP when
/// enrolled, else Email OTP when the account has a verified email, else TOTP enrolment.
async fn show_factor(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    want: Option<&str>,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    let (user_id, username) = ctx.user();
    let user = match auth.mfa_account(user_id).await {
        Ok(Some(user)) if !user.disabled => user,
        Ok(_) => {
            return html_page(
                session,
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                templates::para("This account is disabled or gone. Ask an administrator."),
                vec![clear_header(auth)],
            )
            .await
        }
        Err(e) => return store_failure(auth, session, e).await,
    };
    let f = factors(
        &auth.settings.mfa.config,
        user.mfa.is_enrolled(),
        user.email.as_deref(),
        user.email_verified,
    );
    let email_first = match want {
        Some("email") => true,
        Some("totp") => !f.totp,
        _ => !f.totp_enrolled,
    };
    if f.email_otp && (email_first || !f.totp) {
        return email_page(auth, session, ctx, message, status).await;
    }
    if !f.totp {
        let why = crate::mfa::policy::email_otp_target(
            &auth.settings.mfa.config,
            user.email.as_deref(),
            user.email_verified,
        )
        .err()
        .map_or("", |r| r.reason());
        return html_page(
            session,
            StatusCode::FORBIDDEN,
            "Second factor unavailable",
            html! {
                p id="mfa-no-factor" {
                    "This sign-in needs a code sent by email, but it cannot be sent to this account: "
                    (why) ". Ask an administrator to check the account's email address."
                }
            },
            vec![clear_header(auth)],
        )
        .await;
    }
    if user.mfa.is_enrolled() {
        return verify_page(auth, session, ctx, message, status).await;
    }
    let now = auth.mfa.now();
    match Enrolment::start(
        &auth.settings.mfa.sealer,
        username,
        &auth.settings.mfa.config.issuer,
        now,
    ) {
        Ok(start) => enrol_page(auth, session, ctx, &start, message, status).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a TOTP enrolment");
            html_page(
                session,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Set-up failed",
                templates::para("The second factor could not be set up. Please try again."),
                vec![],
            )
            .await
        }
    }
}

fn clear_header(auth: &AuthView) -> (http::HeaderName, String) {
    (SET_COOKIE, clear_pending_cookie(auth))
}

/// The form's CSRF token (bound to the login or session) and return address.
fn hidden(ctx: &Context, auth: &AuthView) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(auth.mfa.csrf(ctx.id()));
        input type="hidden" name="rd" value=(ctx.rd());
    }
}

/// A message above the form, announced to screen readers.
fn message_html(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message {
            p role="alert" id="mfa-error" { strong { (m) } }
        }
    }
}

async fn enrol_page(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    start: &EnrolmentStart,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    let email_usable = email_usable(auth, ctx).await;
    let body = html! {
        (message_html(message))
        p {
            "This page needs a second sign-in step. Scan the code with an authenticator app, or \
             type the key into it, then enter the 6-digit code the app shows."
        }
        // The SVG is made by `mfa::qr` from the otpauth URI, not from request input.
        div id="qr" role="img" aria-label="QR code of the set-up link" style="width:14rem" {
            (PreEscaped(&start.qr_svg))
        }
        p { "Key: " code id="secret" { (start.manual_key) } }
        p { small { "Set-up link: " code id="otpauth-uri" style="word-break:break-all" { (start.otpauth_uri) } } }
        @if email_usable {
            p { a id="mfa-use-email" href=(format!("{MFA}?factor=email&rd={}", urlencode(ctx.rd()))) { "Email me a code instead" } }
        }
        form id="mfa-enrol-form" method="post" action=(MFA) {
            (hidden(ctx, auth))
            input type="hidden" name="enrolment" value=(start.pending);
            label for="code" { "Code from the app" }
            " "
            input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required;
            " "
            button class="button" id="mfa-submit" type="submit" { "Confirm" }
        }
    };
    html_page(session, status, "Set up two-step sign-in", body, vec![]).await
}

async fn verify_page(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    let email_usable = email_usable(auth, ctx).await;
    let body = html! {
        (message_html(message))
        p { "Enter the 6-digit code from your authenticator app, or one of your recovery codes." }
        form id="mfa-verify-form" method="post" action=(MFA) {
            (hidden(ctx, auth))
            label for="code" { "Code" }
            " "
            input id="code" name="code" autocomplete="one-time-code" required;
            " "
            button class="button" id="mfa-submit" type="submit" { "Continue" }
        }
        @if email_usable {
            p { a id="mfa-use-email" href=(format!("{MFA}?factor=email&rd={}", urlencode(ctx.rd()))) { "Email me a code instead" } }
        }
    };
    html_page(session, status, "Two-step sign-in", body, vec![]).await
}

async fn store_failure(
    auth: &AuthView,
    session: &mut Session,
    e: StoreError,
) -> pingora::Result<()> {
    auth.metrics.store_error(StoreOp::Login);
    tracing::error!(error = %e, "MFA step: store error");
    html_page(
        session,
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        templates::para("The sign-in could not be completed. Please try again."),
        vec![],
    )
    .await
}

fn count(auth: &AuthView, factor: MfaFactor, result: MfaResult) {
    auth.count_second_factor(factor, result);
}

/// The first code of an enrolment: saves the secret, shows the recovery codes once, and
/// finishes the login (or the step-up).
async fn confirm(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    pending: &str,
    code: &str,
    request_id: &str,
) -> pingora::Result<()> {
    let (user_id, username) = ctx.user();
    let now = auth.mfa.now();
    let confirmed = match Enrolment::confirm(
        &auth.settings.mfa.sealer,
        username,
        pending,
        code,
        now,
    ) {
        Ok(confirmed) => confirmed,
        Err(EnrolError::Code(_)) => {
            count(auth, MfaFactor::Totp, MfaResult::Failure);
            let again = Enrolment::resume(
                &auth.settings.mfa.sealer,
                username,
                &auth.settings.mfa.config.issuer,
                pending,
                now,
            );
            return match again {
                Ok(start) => {
                    let msg = "That code does not match. Check the time on your device, then enter the code the app shows now.";
                    enrol_page(
                        auth,
                        session,
                        ctx,
                        &start,
                        Some(msg),
                        StatusCode::UNAUTHORIZED,
                    )
                    .await
                }
                Err(_) => {
                    show(
                        auth,
                        session,
                        ctx,
                        Some("The set-up expired; scan the new code."),
                        StatusCode::OK,
                    )
                    .await
                }
            };
        }
        Err(_) => {
            return show(
                auth,
                session,
                ctx,
                Some("The set-up expired or is not valid; scan the new code."),
                StatusCode::OK,
            )
            .await
        }
    };
    let saved = auth
        .save_enrolment(user_id, confirmed.record.clone(), request_id, now)
        .await;
    match saved {
        Ok(true) => {}
        Ok(false) => return show(auth, session, ctx, None, StatusCode::OK).await,
        Err(e) => return store_failure(auth, session, e).await,
    }
    count(auth, MfaFactor::Totp, MfaResult::Success);
    tracing::info!(user_id, request_id, "TOTP enrolled");
    let (cookies, rd) = match finish(auth, session, ctx, now).await {
        Ok(done) => done,
        Err(e) => return store_failure(auth, session, e).await,
    };
    let body = html! {
        p {
            "Two-step sign-in is set up. These recovery codes each work once, if you lose the \
             app. They are shown only now: keep them somewhere safe."
        }
        ul id="recovery-codes" {
            @for c in &confirmed.recovery_codes { li { code { (c) } } }
        }
        a class="button" id="continue" href=(rd) { "Continue" }
    };
    let extra = cookies.into_iter().map(|c| (SET_COOKIE, c)).collect();
    html_page(
        session,
        StatusCode::OK,
        "Save your recovery codes",
        body,
        extra,
    )
    .await
}

/// A code at the verify form: TOTP (digits) or a recovery code, under the lockout.
async fn verify(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    code: &str,
    request_id: &str,
) -> pingora::Result<()> {
    let (user_id, _) = ctx.user();
    let now = auth.mfa.now();
    let (is_totp, outcome) = auth
        .check_second_factor(user_id, code, request_id, now)
        .await;
    let result = match outcome {
        Ok(r) => r,
        Err(e) => return store_failure(auth, session, e).await,
    };
    let factor = if is_totp {
        MfaFactor::Totp
    } else {
        MfaFactor::RecoveryCode
    };
    match result {
        Ok(()) => {
            count(auth, factor, MfaResult::Success);
            match finish(auth, session, ctx, now).await {
                Ok((cookies, rd)) => redirect(session, &rd, cookies).await,
                Err(e) => store_failure(auth, session, e).await,
            }
        }
        Err(MfaRefusal::Locked { until })
        | Err(MfaRefusal::Wrong {
            outcome: FailureOutcome::LockedNow { until } | FailureOutcome::AlreadyLocked { until },
            ..
        }) => {
            count(auth, factor, MfaResult::Locked);
            tracing::warn!(
                user_id,
                request_id,
                until,
                "MFA locked after too many wrong codes"
            );
            let minutes = until.saturating_sub(now).div_ceil(60);
            let body = html! {
                p id="mfa-locked" { "Too many wrong codes. Try again in " (minutes) " minute(s)." }
            };
            html_page(
                session,
                StatusCode::TOO_MANY_REQUESTS,
                "Locked for now",
                body,
                vec![],
            )
            .await
        }
        Err(MfaRefusal::Wrong { why, outcome }) => {
            let left = match outcome {
                FailureOutcome::Counted { tries_left } => tries_left,
                _ => 0,
            };
            let (label, msg) = match why {
                WrongCode::Replay => (
                    MfaResult::Replay,
                    "That code was already used. Wait for the next one.",
                ),
                WrongCode::Totp | WrongCode::Recovery => {
                    (MfaResult::Failure, "That code is not right.")
                }
            };
            count(auth, factor, label);
            tracing::info!(
                user_id,
                request_id,
                kind = label.as_str(),
                tries_left = left,
                "MFA code refused"
            );
            let msg = format!("{msg} {left} tries left.");
            verify_page(auth, session, ctx, Some(&msg), StatusCode::UNAUTHORIZED).await
        }
        Err(MfaRefusal::Malformed) => {
            verify_page(
                auth,
                session,
                ctx,
                Some("Enter the 6 digits from the app, or a recovery code."),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(MfaRefusal::NotEnrolled) => show(auth, session, ctx, None, StatusCode::OK).await,
        Err(e @ (MfaRefusal::SecretUnreadable(_) | MfaRefusal::SecretUnusable)) => {
            tracing::error!(user_id, error = %e, "stored TOTP secret cannot be used");
            html_page(
                session,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Second factor unavailable",
                templates::para(
                    "Your second factor cannot be checked right now. Ask an administrator to reset it.",
                ),
                vec![],
            )
            .await
        }
    }
}

/// After an accepted code: the pending login's session is issued (recording when MFA was
/// done), or the stepping-up session is marked. Returns the cookies to set and where to go.
async fn finish(
    auth: &AuthView,
    session: &Session,
    ctx: &Context,
    now: u64,
) -> Result<(Vec<String>, String), StoreError> {
    match ctx {
        Context::Pending(waiting) => {
            let Some(login) = auth.mfa.take(&waiting.id).await? else {
                // Already finished in another tab: start over.
                return Ok((vec![clear_pending_cookie(auth)], paths::START.into()));
            };
            let mut cookies = auth.issue_after_second_factor(login.session, now).await?;
            cookies.push(clear_pending_cookie(auth));
            Ok((cookies, safe_rd(auth, session, Some(&login.rd))))
        }
        Context::StepUp { live, rd, .. } => {
            auth.sessions.mark_mfa(live, now).await?;
            Ok((vec![], rd.clone()))
        }
    }
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Whether this account can get a code by email (for the "instead" links).
async fn email_usable(auth: &AuthView, ctx: &Context) -> bool {
    let (user_id, _) = ctx.user();
    auth.mfa_account(user_id)
        .await
        .ok()
        .flatten()
        .is_some_and(|u| {
            crate::mfa::policy::email_otp_target(
                &auth.settings.mfa.config,
                u.email.as_deref(),
                u.email_verified,
            )
            .is_ok()
        })
}

/// `alice@example.com` as `a***@example.com`.
fn masked(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "your address".to_string(),
    }
}

/// The Email OTP page: a button that sends a code, or, once one is in force, the code form
/// (with "send a new code"), and a link to TOTP when the account can use it.
async fn email_page(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    message: Option<&str>,
    status: StatusCode,
) -> pingora::Result<()> {
    let (user_id, _) = ctx.user();
    let now = auth.mfa.now();
    let user = auth.mfa_account(user_id).await.ok().flatten();
    let to = user
        .as_ref()
        .and_then(|u| u.email.as_deref())
        .map(masked)
        .unwrap_or_default();
    let totp = user.as_ref().is_some_and(|u| {
        factors(
            &auth.settings.mfa.config,
            u.mfa.is_enrolled(),
            u.email.as_deref(),
            u.email_verified,
        )
        .totp
    });
    let state = auth
        .mfa
        .email_challenge(ctx.id())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the Email OTP state from the store");
            None
        });
    let in_force = state.as_ref().is_some_and(|c| c.has_code(now));
    let digits = auth.settings.mfa.config.email_otp.length;
    let body = html! {
        (message_html(message))
        @if in_force {
            p { "We sent a " (digits) "-digit code to " strong id="mfa-email-to" { (to) } ". Enter it here." }
            form id="mfa-email-form" method="post" action=(MFA) {
                (hidden(ctx, auth))
                input type="hidden" name="factor" value="email";
                label for="code" { "Code from the email" }
                " "
                input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required;
                " "
                button class="button" id="mfa-submit" type="submit" { "Continue" }
            }
            form id="mfa-email-resend-form" method="post" action=(MFA) {
                (hidden(ctx, auth))
                input type="hidden" name="action" value="email_send";
                button class="button" id="mfa-resend" type="submit" { "Send a new code" }
            }
        } @else {
            p { "This sign-in needs a second step. We can email a one-time code to " strong id="mfa-email-to" { (to) } "." }
            form id="mfa-email-send-form" method="post" action=(MFA) {
                (hidden(ctx, auth))
                input type="hidden" name="action" value="email_send";
                button class="button" id="mfa-send" type="submit" { "Email me a code" }
            }
        }
        @if totp {
            p { a id="mfa-use-totp" href=(format!("{MFA}?factor=totp&rd={}", urlencode(ctx.rd()))) { "Use an authenticator app instead" } }
        }
    };
    html_page(session, status, "Two-step sign-in", body, vec![]).await
}

/// Sends (or re-sends) a code by email for this login or step-up.
async fn email_send(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    request_id: &str,
) -> pingora::Result<()> {
    let now = auth.mfa.now();
    let (user_id, _) = ctx.user();
    let (purpose, connection, keep_until) = match ctx {
        Context::Pending(w) => ("signing in", w.connection.clone(), w.exp),
        Context::StepUp { live, .. } => (
            "opening a page that needs a second sign-in step",
            live.identity.connection.clone(),
            now.saturating_add(PENDING_TTL),
        ),
    };
    let connection = auth
        .provider(&connection)
        .map(|p| p.connection.display_name.clone())
        .unwrap_or(connection);
    // The address the proxy resolved (a trusted proxy's X-Forwarded-For), else the peer.
    let client_ip = session
        .req_header()
        .extensions
        .get::<super::ClientIp>()
        .map(|c| c.0)
        .or_else(|| {
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
        })
        .map(|ip| ip.to_canonical().to_string())
        .unwrap_or_else(|| "an unknown address".to_string());
    let rfc3339 = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    };
    let sent = auth
        .send_email_code(ctx.id(), user_id, keep_until, request_id, |code, exp| {
            let (subject, text, html) = templates::email_otp_mail(&templates::EmailOtpFacts {
                code,
                purpose,
                at: rfc3339(now),
                connection: &connection,
                client_ip: &client_ip,
                expires_at: rfc3339(exp),
                expires_in_minutes: exp.saturating_sub(now).div_ceil(60),
            });
            Mail {
                subject,
                text,
                html,
            }
        })
        .await;
    match sent {
        Ok(_) => email_page(auth, session, ctx, None, StatusCode::OK).await,
        Err(EmailSendFailure::Limited(SendRefusal::TooSoon { wait })) => {
            let msg =
                format!("A code was sent just now. You can ask for a new one in {wait} seconds.");
            email_page(
                auth,
                session,
                ctx,
                Some(&msg),
                StatusCode::TOO_MANY_REQUESTS,
            )
            .await
        }
        Err(EmailSendFailure::Limited(SendRefusal::TooMany)) => {
            let msg = "No more codes can be sent for this sign-in. Use the last code, another factor, or sign in again.";
            email_page(auth, session, ctx, Some(msg), StatusCode::TOO_MANY_REQUESTS).await
        }
        Err(EmailSendFailure::Send(_)) => {
            let msg = "We could not send the code; try again or use another factor.";
            email_page(
                auth,
                session,
                ctx,
                Some(msg),
                StatusCode::SERVICE_UNAVAILABLE,
            )
            .await
        }
        Err(EmailSendFailure::Unusable(_)) => {
            show_factor(auth, session, ctx, None, None, StatusCode::FORBIDDEN).await
        }
        Err(EmailSendFailure::Store(e)) => store_failure(auth, session, e).await,
    }
}

/// A code at the Email OTP form, under the same lock-out as TOTP.
async fn email_verify(
    auth: &AuthView,
    session: &mut Session,
    ctx: &Context,
    code: &str,
    request_id: &str,
) -> pingora::Result<()> {
    let (user_id, _) = ctx.user();
    let now = auth.mfa.now();
    let checked = match auth
        .check_email_code(ctx.id(), user_id, code, request_id)
        .await
    {
        Ok(r) => r,
        Err(e) => return store_failure(auth, session, e).await,
    };
    let f = MfaFactor::EmailOtp;
    let locked = |until: u64| until.saturating_sub(now).div_ceil(60);
    match checked {
        Ok(()) => {
            count(auth, f, MfaResult::Success);
            if let Context::StepUp { .. } = ctx {
                auth.mfa.forget_email(ctx.id()).await;
            }
            match finish(auth, session, ctx, now).await {
                Ok((cookies, rd)) => redirect(session, &rd, cookies).await,
                Err(e) => store_failure(auth, session, e).await,
            }
        }
        Err(EmailRefusal::Locked { until })
        | Err(EmailRefusal::Wrong(
            FailureOutcome::LockedNow { until } | FailureOutcome::AlreadyLocked { until },
        )) => {
            count(auth, f, MfaResult::Locked);
            tracing::warn!(
                user_id,
                request_id,
                until,
                "MFA locked after too many wrong codes"
            );
            let body = html! {
                p id="mfa-locked" { "Too many wrong codes. Try again in " (locked(until)) " minute(s)." }
            };
            html_page(
                session,
                StatusCode::TOO_MANY_REQUESTS,
                "Locked for now",
                body,
                vec![],
            )
            .await
        }
        Err(EmailRefusal::Wrong(FailureOutcome::Counted { tries_left })) => {
            count(auth, f, MfaResult::Failure);
            tracing::info!(user_id, request_id, tries_left, "Email OTP code refused");
            let msg = format!("That code is not right. {tries_left} tries left.");
            email_page(auth, session, ctx, Some(&msg), StatusCode::UNAUTHORIZED).await
        }
        Err(EmailRefusal::Expired) => {
            count(auth, f, MfaResult::Expired);
            let msg = "That code has expired. Send a new one.";
            email_page(auth, session, ctx, Some(msg), StatusCode::UNAUTHORIZED).await
        }
        Err(EmailRefusal::NoCode) => {
            count(auth, f, MfaResult::Failure);
            let msg = "There is no code waiting for this sign-in. Send a new one.";
            email_page(auth, session, ctx, Some(msg), StatusCode::UNAUTHORIZED).await
        }
        Err(EmailRefusal::Gone) => {
            show_factor(auth, session, ctx, None, None, StatusCode::OK).await
        }
    }
}
