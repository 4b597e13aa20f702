//! The mailbox domain: address rules, the registry's rules for a change, token owners,
//! and `Debug` without secrets.

use std::sync::Arc;

use super::*;
use crate::cloud::Cloud;
use crate::secret::ClientSecret;

pub(crate) const CLIENT_ID: &str = "00000000-0000-0000-0000-000000000001";

/// A mailbox with its own confidential app registration.
pub(crate) fn mailbox(address: &str) -> Mailbox {
    Mailbox {
        address: address.into(),
        registration: Registration::App {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: CLIENT_ID.into(),
            credential: Credential::Secret {
                secret: ClientSecret::new("s3cr3t~value"),
                expires: None,
            },
            cloud: Cloud::Global,
            app_only: false,
        },
        password: Some(PasswordVerifier::Generated {
            salt: [7; 32],
            tag: [9; 32],
        }),
        created: 1_700_000_000,
        sending: Default::default(),
    }
}

/// A mailbox that takes its token from `delegate`.
pub(crate) fn shared(address: &str, delegate: &str) -> Mailbox {
    Mailbox {
        registration: Registration::TokenFrom {
            delegate: delegate.into(),
        },
        password: None,
        ..mailbox(address)
    }
}

#[test]
fn addresses_are_validated_and_lower_cased() {
    assert_eq!(
        normalize_address("Alice.B+x@Contoso.COM").unwrap(),
        "alice.b+x@contoso.com"
    );
    for bad in [
        "",
        "alice",
        "alice@",
        "@contoso.com",
        "alice@localhost",
        "al ice@contoso.com",
        "alice@contoso..com",
        ".alice@contoso.com",
        "a..b@contoso.com",
        "a/b@contoso.com",
        "alice@-contoso.com",
        "alice@contoso.com\n",
        "älice@contoso.com",
        "a\"b@contoso.com",
        "a@b@contoso.com",
        "alice@contoso_x.com",
    ] {
        assert!(normalize_address(bad).is_err(), "{bad:?}");
    }
    let long = format!(
        "{}@{}.com",
        "a".repeat(64),
        "b".repeat(63) + &".c".repeat(95)
    );
    assert!(long.len() > 254);
    assert!(normalize_address(&long).is_err());
}

#[test]
fn the_token_owner_is_the_mailbox_itself_or_its_delegate() {
    let mut r = Registry::default();
    r.insert(mailbox("alice@contoso.com")).unwrap();
    r.insert(shared("help@contoso.com", "Alice@Contoso.com"))
        .unwrap();
    r.insert(shared("sales@contoso.com", "alice@contoso.com"))
        .unwrap();

    let alice = r.get_arc("alice@contoso.com").unwrap();
    let owner = r.token_owner(alice).unwrap();
    assert!(Arc::ptr_eq(&owner, alice), "the registry's own handle");
    for address in ["help@contoso.com", "sales@contoso.com"] {
        let owner = r.token_owner(r.get(address).unwrap()).unwrap();
        assert!(Arc::ptr_eq(&owner, alice), "{address}");
    }
    // A mailbox from an older read of the registry still has an owner.
    let stale = mailbox("alice@contoso.com");
    assert_eq!(r.token_owner(&stale).unwrap().address, "alice@contoso.com");

    let dependents: Vec<&str> = r
        .dependents("ALICE@contoso.com")
        .iter()
        .map(|m| m.address.as_str())
        .collect();
    assert_eq!(dependents, ["help@contoso.com", "sales@contoso.com"]);
    assert!(r.dependents("help@contoso.com").is_empty());
    assert!(r.dependents("nobody@contoso.com").is_empty());
}

#[test]
fn a_missing_delegate_or_a_chain_has_no_token_owner() {
    let mut r = Registry::default();
    r.insert(mailbox("alice@contoso.com")).unwrap();
    r.insert(shared("help@contoso.com", "alice@contoso.com"))
        .unwrap();
    r.insert(shared("chain@contoso.com", "help@contoso.com"))
        .unwrap();
    r.insert(shared("orphan@contoso.com", "gone@contoso.com"))
        .unwrap();

    let e = r
        .token_owner(r.get("orphan@contoso.com").unwrap())
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::MissingDelegate { mailbox, delegate }
            if mailbox == "orphan@contoso.com" && delegate == "gone@contoso.com"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "mailbox orphan@contoso.com takes its token from gone@contoso.com, which is not registered"
    );
    let e = r
        .token_owner(r.get("chain@contoso.com").unwrap())
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::DelegateChain { mailbox, delegate, next }
            if mailbox == "chain@contoso.com"
                && delegate == "help@contoso.com"
                && next == "alice@contoso.com"),
        "{e:?}"
    );

    let e = r
        .insert(shared("self@contoso.com", "SELF@contoso.com"))
        .unwrap_err();
    assert!(matches!(e, RegistryError::OwnDelegate(_)), "{e:?}");
    let e = r
        .insert(shared("x@contoso.com", "not an address"))
        .unwrap_err();
    assert!(matches!(e, RegistryError::InvalidAddress { .. }), "{e:?}");
}

#[test]
fn duplicates_and_unknowns_are_refused() {
    let mut r = Registry::default();
    r.insert(mailbox("alice@contoso.com")).unwrap();
    let e = r.insert(mailbox("ALICE@contoso.com")).unwrap_err();
    assert!(matches!(e, RegistryError::Duplicate(_)));
    assert!(r.set_password("nobody@contoso.com", None).is_err());
    r.set_password("Alice@contoso.com", None).unwrap();
    assert!(r.get("alice@contoso.com").unwrap().password.is_none());
    assert_eq!(
        r.remove("ALICE@CONTOSO.COM").unwrap().address,
        "alice@contoso.com"
    );
    assert!(r.is_empty());
}

#[test]
fn debug_hides_secret_and_verifier() {
    let shown = format!("{:?}", mailbox("alice@contoso.com"));
    assert!(shown.contains("alice@contoso.com"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(
        !shown.contains("[7, 7") && !shown.contains("[9, 9"),
        "{shown}"
    );
    assert!(
        shown.contains("PasswordVerifier::Generated([redacted])"),
        "{shown}"
    );
    assert!(shown.contains("ClientSecret([redacted])"), "{shown}");
    let shown = format!("{:?}", shared("help@contoso.com", "alice@contoso.com"));
    assert!(
        shown.contains(r#"TokenFrom { delegate: "alice@contoso.com" }"#),
        "{shown}"
    );
}

#[test]
fn an_app_only_mailbox_needs_a_credential() {
    let mut r = Registry::default();
    let mut m = mailbox("robot@contoso.com");
    if let Registration::App {
        credential,
        app_only,
        ..
    } = &mut m.registration
    {
        *credential = Credential::None;
        *app_only = true;
    }
    let e = r.insert(m).unwrap_err();
    assert!(
        matches!(&e, RegistryError::AppOnlyWithoutCredential(a) if a == "robot@contoso.com"),
        "{e:?}"
    );
    assert!(r.is_empty());
}
