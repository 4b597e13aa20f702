use super::*;
use crate::state::delivery_log::EventKind;

fn event(kind: EventKind, at_ms: u64) -> DeliveryEvent {
    let mut e = DeliveryEvent::new(kind, "scanner@contoso.com")
        .to(&["a@fabrikam.com".into(), "b@fabrikam.com".into()]);
    e.at_ms = at_ms;
    e.time = crate::datetime::rfc3339_ms(at_ms);
    e
}

#[test]
fn a_line_says_what_happened_to_which_message() {
    let mut e = event(EventKind::Delivered, 1_796_644_800_123).reply("250 2.0.0 OK <x@y>");
    e.queue_id = Some("0193a5c2d81f3c9e4b7a21d0".into());
    e.sender = Some("scanner@contoso.com".into());
    e.size = Some(12_595);
    e.route = Some("smtp".into());
    assert_eq!(
        line(&e),
        "2026-12-07T12:00:00.123Z delivered scanner@contoso.com 0193a5c2d81f3c9e4b7a21d0 \
         <scanner@contoso.com> -> a@fabrikam.com, b@fabrikam.com 12.3 KB smtp 250 2.0.0 OK <x@y>"
    );
    let mut refused = event(EventKind::Refused, 1_796_644_800_123)
        .reply("550 5.7.60 SMTP; Client does not have permissions\u{1b}[2J");
    refused.recipients.clear();
    refused.request_id = Some("req-1".into());
    assert_eq!(
        line(&refused),
        "2026-12-07T12:00:00.123Z refused   scanner@contoso.com - -> 2 recipients - - \
         550 5.7.60 SMTP; Client does not have permissions[2J (request-id req-1)"
    );
}

#[test]
fn follow_prints_each_event_once_even_within_one_millisecond() {
    let mut shown = Shown::default();
    let (a, b) = (
        event(EventKind::Queued, 1000),
        event(EventKind::Delivered, 1000),
    );
    assert_eq!(shown.new_events(vec![a.clone()]), std::slice::from_ref(&a));
    // The same millisecond again, with one event more and a twin of the first.
    let again = shown.new_events(vec![a.clone(), b.clone(), a.clone()]);
    assert_eq!(again, [b.clone(), a.clone()]);
    assert!(
        shown
            .new_events(vec![a.clone(), b.clone(), a.clone()])
            .is_empty()
    );
    // An event written late, still within the look-back window.
    let later = event(EventKind::Deferred, 4000);
    let late = event(EventKind::Refused, 3500);
    assert_eq!(
        shown.new_events(vec![later.clone()]),
        std::slice::from_ref(&later)
    );
    assert_eq!(
        shown.new_events(vec![a.clone(), b, a, later, late.clone()]),
        [late]
    );
}

#[test]
fn follow_forgets_what_is_out_of_its_window() {
    let mut shown = Shown::default();
    shown.new_events(vec![event(EventKind::Queued, 1000)]);
    shown.new_events(vec![event(EventKind::Queued, 1000 + FOLLOW_OVERLAP_MS + 1)]);
    assert_eq!(shown.counts.len(), 1);
    assert_eq!(shown.order.len(), 1);
}
