//! Each cloud's login host, certificate credentials on every grant, and the client
//! credentials grant.

use super::*;

#[test]
fn each_cloud_signs_in_at_its_login_host_unless_the_authority_is_set() {
    let default = global_endpoint();
    for (cloud, host) in [
        (Cloud::Global, "https://login.microsoftonline.com"),
        (Cloud::UsGov, "https://login.microsoftonline.us"),
        (Cloud::UsGovDod, "https://login.microsoftonline.us"),
        (Cloud::China, "https://login.partner.microsoftonline.cn"),
    ] {
        assert_eq!(
            default.token_url(cloud, "contoso.com"),
            format!("{host}/contoso.com/oauth2/v2.0/token")
        );
        assert_eq!(
            default.authorize_url(cloud, "contoso.com"),
            format!("{host}/contoso.com/oauth2/v2.0/authorize")
        );
        assert_eq!(
            default.device_code_url(cloud, "contoso.com"),
            format!("{host}/contoso.com/oauth2/v2.0/devicecode")
        );
        assert_eq!(
            default.native_client_redirect_uri(cloud),
            format!("{host}/common/oauth2/nativeclient")
        );
    }
    // Any other authority serves every cloud (a fake in tests, a proxy).
    let fixed = TokenEndpoint::new(
        "https://login.microsoftonline.us",
        tls(),
        Duration::from_secs(1),
    )
    .unwrap();
    for cloud in Cloud::ALL {
        assert_eq!(
            fixed.token_url(cloud, "t"),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
    }
}

/// [`check_assertion`] for an assertion addressed to `endpoint`'s token URL.
fn check_assertion_to(form: &HashMap<String, String>, endpoint: &TokenEndpoint) -> String {
    check_assertion(
        form,
        &endpoint.token_url(Cloud::Global, "contoso.onmicrosoft.com"),
    )
}

/// Checks the client assertion in `form`: a PS256 JWT for [`public_app`]'s client,
/// addressed to `audience`, signed by the test certificate; returns its `jti`.
fn check_assertion(form: &HashMap<String, String>, audience: &str) -> String {
    use aws_lc_rs::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rustls_pki_types::pem::PemObject;

    assert!(!form.contains_key("client_secret"), "{form:?}");
    assert_eq!(form["client_assertion_type"], JWT_BEARER);
    let jwt = &form["client_assertion"];
    let part = |i: usize| -> serde_json::Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let credential = crate::oauth::testing::certificate_credential(Default::default());
    assert_eq!(part(0)["alg"], "PS256");
    assert_eq!(part(0)["x5t#S256"], credential.x5t_s256());
    let claims = part(1);
    assert_eq!(claims["aud"], audience);
    assert_eq!(claims["iss"], public_app().client_id);
    assert_eq!(claims["sub"], public_app().client_id);
    let (cert, _) = crate::oauth::testing::rsa_pair();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let key = UnparsedPublicKey::new(
        &RSA_PSS_2048_8192_SHA256,
        parsed.public_key().subject_public_key.data.to_vec(),
    );
    let (signed, signature) = jwt.rsplit_once('.').unwrap();
    key.verify(
        signed.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
    .expect("the assertion verifies with the certificate's key");
    claims["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_grant_of_a_certificate_app_carries_a_fresh_assertion() {
    let credential = Credential::Certificate(crate::oauth::testing::certificate_credential(
        Default::default(),
    ));
    let app = confidential_app(&credential);
    let mut jtis = Vec::new();

    let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), app).await;
    result.unwrap();
    let audience = format!(
        "{}/contoso.onmicrosoft.com/oauth2/v2.0/token",
        request
            .header("host")
            .map(|h| format!("http://{h}"))
            .unwrap()
    );
    let form = request.form();
    assert_eq!(form["grant_type"], "refresh_token");
    jtis.push(check_assertion(&form, &audience));

    let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
    let endpoint = endpoint(addr, Duration::from_secs(5));
    let request = endpoint
        .authorization_request(&app, SIGN_IN_SCOPES, "http://localhost:1/", "a@b.cd")
        .unwrap();
    endpoint
        .redeem_code(&app, request, "the-code", SIGN_IN_SCOPES)
        .await
        .unwrap();
    let form = server.await.unwrap().form();
    assert_eq!(form["grant_type"], "authorization_code");
    jtis.push(check_assertion_to(&form, &endpoint));

    let (addr, server) = serve_once(http("200 OK", &[], &signed_in_body())).await;
    let device = DeviceAuthorization::for_tests(Duration::from_secs(900), MIN_POLL_INTERVAL);
    let endpoint = self::endpoint(addr, Duration::from_secs(5));
    endpoint
        .poll_device_code(&app, &device, SIGN_IN_SCOPES)
        .await
        .unwrap();
    let form = server.await.unwrap().form();
    assert_eq!(form["grant_type"], DEVICE_CODE_GRANT);
    assert_eq!(form.len(), 5, "{form:?}");
    jtis.push(check_assertion_to(&form, &endpoint));

    let app_only = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"AT-new"}"#;
    let (addr, server) = serve_once(http("200 OK", &[], app_only)).await;
    let endpoint = self::endpoint(addr, Duration::from_secs(5));
    endpoint
        .client_credentials(&app, Cloud::Global.app_only_scopes())
        .await
        .unwrap();
    let form = server.await.unwrap().form();
    assert_eq!(form["grant_type"], "client_credentials");
    jtis.push(check_assertion_to(&form, &endpoint));

    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 4, "every assertion has its own jti");
}

#[tokio::test]
async fn client_credentials_ask_for_the_default_scope_and_get_no_refresh_token() {
    let app_only = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"AT-new"}"#;
    let (addr, server) = serve_once(http("200 OK", &[], app_only)).await;
    let secret = secret();
    let app = App {
        cloud: Cloud::UsGov,
        ..confidential_app(&secret)
    };
    let grant = endpoint(addr, Duration::from_secs(5))
        .client_credentials(&app, Cloud::UsGov.app_only_scopes())
        .await
        .unwrap();
    assert_eq!(grant.access_token.expose(), "AT-new");
    assert!(grant.refresh_token.is_none());
    assert_eq!(grant.scope, "https://outlook.office365.us/.default");
    let request = server.await.unwrap();
    assert_posted_to(&request, "token");
    let form = request.form();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "https://outlook.office365.us/.default");
    assert_eq!(form["client_id"], "00000000-1111-2222-3333-444444444444");
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form.len(), 4, "{form:?}");
}
