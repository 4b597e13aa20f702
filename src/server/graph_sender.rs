//! PLACEHOLDER until the Graph client lands (replaced in the same change set).
use super::Services;
use crate::error::Error;
use crate::mailbox::Mailbox;

#[derive(Default)]
pub struct GraphClients;

pub struct GraphSender;

impl crate::submission::driver::HeldSender for GraphSender {
    fn send<'a>(
        &'a self,
        _message: &'a [u8],
        _recipients: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>
    {
        Box::pin(async { Err("451 4.3.0 Microsoft Graph is not available\r\n".to_string()) })
    }
}

pub(super) async fn open(services: &Services, mailbox: &Mailbox) -> Result<GraphSender, Error> {
    let _clients = &services.submissions.graphs;
    Err(Error::Token {
        mailbox: mailbox.address.clone(),
        source: crate::oauth::TokenError::NotAuthorized,
    })
}
