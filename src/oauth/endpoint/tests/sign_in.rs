//! The sign-in grants: starting and polling a device code, and redeeming an authorization
//! code with its PKCE verifier.

use super::*;

#[test]
fn sign_in_urls_put_the_tenant_in_one_segment() {
    let e = global_endpoint();
    let base = "https://login.microsoftonline.com";
    assert_eq!(
        e.authorize_url(Cloud::Global, "a/b"),
        format!("{base}/a%2Fb/oauth2/v2.0/authorize")
    );
    assert_eq!(
        e.device_code_url(Cloud::Global, "common"),
        format!("{base}/common/oauth2/v2.0/devicecode")
    );
    assert_eq!(
        e.native_client_redirect_uri(Cloud::Global),
        format!("{base}/common/oauth2/nativeclient")
    );
}

#[tokio::test]
async fn a_device_code_start_names_only_the_client_and_the_scopes() {
    let (addr, server) = serve_once(http("200 OK", &[], DEVICE_CODE)).await;
    let secret = secret();
    let device = endpoint(addr, Duration::from_secs(5))
        .start_device_code(&confidential_app(&secret), SIGN_IN_SCOPES)
        .await
        .unwrap();
    let request = server.await.unwrap();
    assert_posted_to(&request, "devicecode");
    let form = request.form();
    assert_eq!(form["client_id"], "00000000-1111-2222-3333-444444444444");
    assert_eq!(form["scope"], SIGN_IN_SCOPES.join(" "));
    assert_eq!(form.len(), 2, "{form:?}");

    assert_eq!(device.user_code, "GQ7XH2RKP");
    assert_eq!(device.verification_uri, "https://microsoft.com/devicelogin");
    let message = device.message.as_deref().unwrap();
    assert!(message.ends_with("to authenticate. [2J"), "{message}");
    assert_eq!(device.expires_in, Duration::from_secs(900));
    assert_eq!(device.interval, MIN_POLL_INTERVAL);
    assert!(!format!("{device:?}").contains("secret-device-code"));
}

#[tokio::test]
async fn a_device_code_poll_sends_the_grant_and_reads_the_id_token() {
    let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
    let secret = secret();
    let device = DeviceAuthorization::for_tests(Duration::from_secs(900), MIN_POLL_INTERVAL);
    let grant = endpoint(addr, Duration::from_secs(5))
        .poll_device_code(&confidential_app(&secret), &device, SIGN_IN_SCOPES)
        .await
        .unwrap();
    let request = server.await.unwrap();
    assert_posted_to(&request, "token");
    assert_eq!(request.header("accept"), Some("application/json"));
    let form = request.form();
    assert_eq!(form["grant_type"], DEVICE_CODE_GRANT);
    assert_eq!(form["device_code"], "device-code");
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form.len(), 4, "{form:?}");
    assert_eq!(grant.access_token.expose(), "AT-new");
    assert_eq!(grant.id_token.as_deref(), Some(ID_TOKEN));
    assert!(!format!("{grant:?}").contains(ID_TOKEN));
}

#[tokio::test]
async fn a_pending_poll_is_rejected_and_odd_answers_are_malformed() {
    let pending = r#"{"error":"authorization_pending","error_description":"AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.","error_codes":[70016]}"#;
    let device = DeviceAuthorization::for_tests(Duration::from_secs(900), MIN_POLL_INTERVAL);
    let poll = |response: Vec<u8>| {
        let device = &device;
        async move {
            let (addr, _server) = serve_once(response).await;
            endpoint(addr, Duration::from_secs(5))
                .poll_device_code(&public_app(), device, SIGN_IN_SCOPES)
                .await
        }
    };
    let e = poll(http("400 Bad Request", &[], pending))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, IdpError::Rejected { error, codes, .. }
            if error == "authorization_pending" && codes == &[70016]),
        "{e:?}"
    );
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            "Content-Type `text/html`",
        ),
        (
            http("200 OK", &[], r#"{"token_type":"Bearer","expires_in":5}"#),
            "missing field `access_token`",
        ),
        (expires_in_of_the_wrong_type(), "wrong type"),
        (http("200 OK", &[], "{\"access"), "not JSON"),
    ];
    for (response, expected) in cases {
        let e = poll(response).await.unwrap_err();
        assert_malformed(&e, expected);
    }
}

#[tokio::test]
async fn a_code_is_redeemed_with_its_pkce_verifier_and_redirect_uri() {
    let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
    let endpoint = endpoint(addr, Duration::from_secs(5));
    let request = endpoint
        .authorization_request(
            &public_app(),
            SIGN_IN_SCOPES,
            "http://localhost:8400/",
            "alice@contoso.com",
        )
        .unwrap();
    let url = request.url().clone();
    assert_eq!(url.path(), "/contoso.onmicrosoft.com/oauth2/v2.0/authorize");
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], "00000000-1111-2222-3333-444444444444");
    assert_eq!(query["redirect_uri"], "http://localhost:8400/");
    assert_eq!(query["scope"], SIGN_IN_SCOPES.join(" "));
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["login_hint"], "alice@contoso.com");
    assert_eq!(query["prompt"], "select_account");
    assert!(request.state_matches(&query["state"]));
    assert!(!request.state_matches("forged"));
    let shown = format!("{request:?}");
    assert!(!shown.contains(&query["state"]), "{shown}");

    let grant = endpoint
        .redeem_code(&public_app(), request, "1.AQ-the-code", SIGN_IN_SCOPES)
        .await
        .unwrap();
    assert_eq!(grant.id_token.as_deref(), Some(ID_TOKEN));
    let form = server.await.unwrap().form();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "1.AQ-the-code");
    assert_eq!(form["redirect_uri"], "http://localhost:8400/");
    assert_eq!(form["scope"], SIGN_IN_SCOPES.join(" "));
    assert!(!form.contains_key("client_secret"), "{form:?}");
    // RFC 7636 §4.6: the challenge is BASE64URL(SHA256(verifier)).
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, form["code_verifier"].as_bytes());
    use base64::Engine as _;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    assert_eq!(challenge, query["code_challenge"]);
}

#[test]
fn refresh_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let endpoint =
        TokenEndpoint::new("https://login.example", tls(), Duration::from_secs(1)).unwrap();
    let (app, token) = (public_app(), RefreshToken::new("x"));
    let future = endpoint.refresh(&app, &token, DELEGATED_SCOPES);
    assert_send(&future);
}
