//! The refresh grant against every kind of answer: success, refusals, outages, malformed
//! and oversized answers, silence, closed ports and redirects; the endpoint's URLs.

use super::*;

#[tokio::test]
async fn success_parses_the_rotated_token_expiry_and_scope() {
    let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), public_app()).await;
    let grant = result.unwrap();
    assert_eq!(grant.access_token.expose(), "AT-new");
    assert_eq!(
        grant.refresh_token.as_ref().map(RefreshToken::expose),
        Some("RT-rotated")
    );
    let left = grant
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((3597..=3599).contains(&left), "expires in {left} s");
    assert_eq!(grant.scope, DELEGATED_SCOPES[..3].join(" "));
    assert!(!format!("{grant:?}").contains("AT-new"));

    assert_posted_to(&request, "token");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(request.header("user-agent"), Some(USER_AGENT));
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test]
async fn a_public_client_sends_the_grant_without_a_secret() {
    let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), public_app()).await;
    result.unwrap();
    let form = request.form();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["client_id"], "00000000-1111-2222-3333-444444444444");
    assert_eq!(form["refresh_token"], OLD_RT);
    assert_eq!(
        form["scope"],
        "https://outlook.office.com/IMAP.AccessAsUser.All \
         https://outlook.office.com/POP.AccessAsUser.All \
         https://outlook.office.com/SMTP.Send offline_access"
    );
    assert!(!form.contains_key("client_secret"), "{form:?}");
    assert_eq!(form.len(), 4, "{form:?}");
}

#[tokio::test]
async fn a_confidential_client_sends_its_secret_in_the_body() {
    let secret = secret();
    let app = confidential_app(&secret);
    let (result, request) = refresh_against(http("200 OK", &[], SUCCESS), app).await;
    result.unwrap();
    assert_eq!(request.form()["client_secret"], SECRET);
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test]
async fn invalid_grant_is_rejected_with_the_aadsts_code() {
    let (result, _) =
        refresh_against(http("400 Bad Request", &[], INVALID_GRANT), public_app()).await;
    let e = result.unwrap_err();
    assert_no_secret(&e);
    assert!(e.needs_admin());
    match e {
        IdpError::Rejected {
            status,
            error,
            description,
            codes,
        } => {
            assert_eq!(status, 400);
            assert_eq!(error, "invalid_grant");
            assert!(description.starts_with("AADSTS700082: "), "{description}");
            assert_eq!(codes, [700082]);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_client_with_401_is_rejected() {
    let body = r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired.","error_codes":[7000222]}"#;
    let (result, _) = refresh_against(http("401 Unauthorized", &[], body), public_app()).await;
    let e = result.unwrap_err();
    assert!(e.needs_admin());
    assert!(
        matches!(&e, IdpError::Rejected { status: 401, codes, .. } if codes == &[7000222]),
        "{e:?}"
    );
}

#[tokio::test]
async fn service_unavailable_honours_retry_after() {
    let response = http("503 Service Unavailable", &["Retry-After: 7"], "");
    let (result, _) = refresh_against(response, public_app()).await;
    match result.unwrap_err() {
        IdpError::Unavailable {
            reason,
            retry_after,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
            assert!(reason.contains("503"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn throttling_and_temporarily_unavailable_are_unavailable() {
    let temporarily = r#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: The server terminated an operation because it encountered a client request loop.","error_codes":[50196]}"#;
    let server_error = r#"{"error":"server_error","error_description":"AADSTS90033: A transient error has occurred.","error_codes":[90033]}"#;
    let cases = [
        (http("400 Bad Request", &[], temporarily), None),
        (http("400 Bad Request", &[], server_error), None),
        (
            http("429 Too Many Requests", &["Retry-After: 30"], "{}"),
            Some(30),
        ),
        (
            http("500 Internal Server Error", &[], "<html>oops</html>"),
            None,
        ),
        (
            http("502 Bad Gateway", &["Retry-After: soon"], INVALID_GRANT),
            None,
        ),
    ];
    for (response, expected) in cases {
        let (result, _) = refresh_against(response, public_app()).await;
        let e = result.unwrap_err();
        assert!(!e.needs_admin());
        match e {
            IdpError::Unavailable { retry_after, .. } => {
                assert_eq!(retry_after, expected.map(Duration::from_secs));
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn answers_that_are_not_token_responses_are_malformed() {
    let cases: [(Vec<u8>, &str); 8] = [
        (
            http("200 OK", &[], r#"{"access_token": "AT-new", "#),
            "not JSON",
        ),
        (http("200 OK", &[], "not json"), "not JSON"),
        (
            http(
                "200 OK",
                &[],
                r#"{"token_type":"Bearer","expires_in":3599}"#,
            ),
            "access_token",
        ),
        (
            http(
                "200 OK",
                &[],
                r#"{"token_type":"Bearer","access_token":"AT-new"}"#,
            ),
            "expires_in",
        ),
        // serde would quote the value: the message must not.
        (expires_in_of_the_wrong_type(), "wrong type"),
        (
            http(
                "200 OK",
                &[],
                r#"{"token_type":"pop","access_token":"AT-new","expires_in":5}"#,
            ),
            "Bearer",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            "Content-Type",
        ),
        (http("404 Not Found", &[], "<html/>"), "404"),
    ];
    for (response, expected) in cases {
        let (result, _) = refresh_against(response, public_app()).await;
        let e = result.unwrap_err();
        assert_malformed(&e, expected);
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let padding = " ".repeat(MAX_RESPONSE_BYTES);
    let big = format!(r#"{{"pad":"{padding}","access_token":"AT-new"}}"#);
    let mut chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for piece in big.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    for response in [http("200 OK", &[], &big), chunked] {
        let (addr, server) = serve_once(response).await;
        let e = endpoint(addr, Duration::from_secs(5))
            .refresh(&public_app(), &RefreshToken::new(OLD_RT), DELEGATED_SCOPES)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, IdpError::Malformed(why) if why.contains("over 65536 bytes")),
            "{e:?}"
        );
        // The fake may see a reset once the relay stops reading; only the request matters.
        drop(server);
    }
}

#[tokio::test]
async fn a_silent_endpoint_times_out_as_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and reads, then never answers; a second case answers the head only.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        for answer_head in [false, true] {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request(&mut stream).await;
            if answer_head {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: 100\r\n\r\n{\"access";
                stream.write_all(head).await.unwrap();
            }
            held.push(stream);
        }
        std::future::pending::<()>().await;
    });
    let endpoint = endpoint(addr, Duration::from_millis(300));
    for _ in 0..2 {
        let started = Instant::now();
        let e = endpoint
            .refresh(&public_app(), &RefreshToken::new(OLD_RT), DELEGATED_SCOPES)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(
            matches!(&e, IdpError::Unavailable { reason, .. } if reason.contains("timed out")),
            "{e:?}"
        );
        assert_no_secret(&e);
    }
    silent.abort();
}

#[tokio::test]
async fn a_closed_port_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = endpoint(addr, Duration::from_secs(5))
        .refresh(&public_app(), &RefreshToken::new(OLD_RT), DELEGATED_SCOPES)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, IdpError::Unavailable { reason, retry_after: None } if reason.starts_with("cannot connect")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let location = format!(
        "Location: http://{}/common/oauth2/v2.0/token",
        elsewhere.local_addr().unwrap()
    );
    let (result, _) = refresh_against(http("302 Found", &[&location], ""), public_app()).await;
    let e = result.unwrap_err();
    assert!(
        matches!(&e, IdpError::Malformed(why) if why.contains("302")),
        "{e:?}"
    );
    let followed = tokio::time::timeout(Duration::from_millis(200), elsewhere.accept()).await;
    assert!(followed.is_err(), "the redirect was followed");
}

#[test]
fn token_url_puts_the_tenant_in_one_segment() {
    for authority in [
        "https://login.microsoftonline.com",
        "https://login.microsoftonline.com/",
    ] {
        let e = TokenEndpoint::new(authority, tls(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            e.token_url(Cloud::Global, "contoso.onmicrosoft.com"),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            e.token_url(Cloud::Global, "a/b?c"),
            "https://login.microsoftonline.com/a%2Fb%3Fc/oauth2/v2.0/token"
        );
    }
    let e = TokenEndpoint::new("http://127.0.0.1:8080", tls(), Duration::from_secs(1)).unwrap();
    assert_eq!(
        e.token_url(Cloud::China, "organizations"),
        "http://127.0.0.1:8080/organizations/oauth2/v2.0/token"
    );
    assert_eq!(
        format!("{e:?}"),
        "TokenEndpoint { authority: \"http://127.0.0.1:8080/\", timeout: 1s, .. }"
    );
}

#[test]
fn only_http_authorities_are_accepted() {
    for bad in [
        "ftp://example.com",
        "not a url",
        "mailto:a@b",
        "https://h/?q=1",
    ] {
        let e = TokenEndpoint::new(bad, tls(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, IdpError::Unavailable { .. }), "{bad}: {e:?}");
    }
}

#[test]
fn endpoint_text_is_cleaned_and_capped() {
    assert_eq!(clean("a\r\nb\tc"), "a  b c");
    let long = "x".repeat(MAX_ERROR_TEXT + 10);
    assert_eq!(clean(&long).chars().count(), MAX_ERROR_TEXT + 1);
    assert_eq!(clean(&"x".repeat(MAX_ERROR_TEXT)).len(), MAX_ERROR_TEXT);
}
