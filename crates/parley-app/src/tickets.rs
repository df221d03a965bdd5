//! Socket tickets: short-lived (30 s), MAC-signed permits that a WebSocket presents in its first
//! frame, so no long-lived token ever travels in a URL. Any node can check them: the MAC key is
//! derived from the master key every node has.

use crate::{App, AppError};
use base64::Engine;
use hmac::{Hmac, Mac};
use parley_core::{TenantId, Timestamp};
use sha2::Sha256;

pub const TICKET_TTL_MS: i64 = 30_000;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a ticket lets its socket be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketSubject {
    /// A signed-in user, by the hash of their session token.
    Agent { session_hash: Vec<u8> },
    /// A visitor, by id.
    Visitor { visitor: parley_core::VisitorId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub tenant: TenantId,
    pub subject: TicketSubject,
    pub expires: Timestamp,
}

fn mac(key: &[u8; 32], payload: &str) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(payload.as_bytes());
    m.finalize().into_bytes().to_vec()
}

impl App {
    pub fn issue_ticket(&self, tenant: TenantId, subject: TicketSubject) -> String {
        let exp = self.now().plus_millis(TICKET_TTL_MS).0;
        let (kind, who) = match &subject {
            TicketSubject::Agent { session_hash } => ("a", B64.encode(session_hash)),
            TicketSubject::Visitor { visitor } => ("v", visitor.to_string()),
        };
        let payload = format!("t1.{kind}.{tenant}.{who}.{exp}");
        let keys = self.keys.ring().derived_keys("socket-ticket");
        let sig = keys.first().map(|k| mac(k, &payload)).unwrap_or_default();
        format!("{payload}.{}", B64.encode(sig))
    }

    /// Check a ticket's MAC and expiry.
    pub fn verify_ticket(&self, ticket: &str) -> Result<Ticket, AppError> {
        let bad = || AppError::Unauthenticated;
        if ticket.len() > 512 {
            return Err(bad());
        }
        let (payload, sig) = ticket.rsplit_once('.').ok_or_else(bad)?;
        let sig = B64.decode(sig).map_err(|_| bad())?;
        let ok = self
            .keys
            .ring()
            .derived_keys("socket-ticket")
            .iter()
            .any(|k| {
                use subtle::ConstantTimeEq;
                let expected = mac(k, payload);
                expected.len() == sig.len() && bool::from(expected.ct_eq(&sig))
            });
        if !ok {
            return Err(bad());
        }
        let parts: Vec<&str> = payload.split('.').collect();
        let [version, kind, tenant, who, exp] = parts[..] else {
            return Err(bad());
        };
        if version != "t1" {
            return Err(bad());
        }
        let expires = Timestamp(exp.parse().map_err(|_| bad())?);
        if expires <= self.now() {
            return Err(bad());
        }
        let tenant = tenant.parse().map_err(|_| bad())?;
        let subject = match kind {
            "a" => TicketSubject::Agent {
                session_hash: B64.decode(who).map_err(|_| bad())?,
            },
            "v" => TicketSubject::Visitor {
                visitor: who.parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        Ok(Ticket {
            tenant,
            subject,
            expires,
        })
    }
}
