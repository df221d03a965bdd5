//! Validated values. Each has a private field and one way in: `parse`, which checks it.

use crate::DomainError;
use std::fmt;

/// Characters that never belong in a name or a single-line field: controls (including newlines)
/// and the Unicode bidi overrides that can make a name display as something else.
fn has_forbidden_chars(s: &str) -> bool {
    s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}' | '\u{FEFF}')
    })
}

fn single_line(field: &'static str, raw: &str, max_chars: usize) -> Result<String, DomainError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(DomainError::new(field, "required", "must not be empty"));
    }
    if trimmed.chars().count() > max_chars {
        return Err(DomainError::new(
            field,
            "too_long",
            format!("must be at most {max_chars} characters"),
        ));
    }
    if has_forbidden_chars(trimmed) {
        return Err(DomainError::new(
            field,
            "invalid_characters",
            "must not contain control or direction-override characters",
        ));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                single_line($field, raw, $max).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

text_value!(
    /// A tenant's (site's) display name.
    SiteName, "name", 100
);
text_value!(
    /// A department's name, unique within its tenant.
    DepartmentName, "name", 80
);

/// A person's display name. Personal data: `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        single_line("display_name", raw, 100).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DisplayName([personal data])")
    }
}

/// A tenant's short public handle, typed at sign-in ("workspace"): lowercase letters, digits and
/// inner hyphens, 2 to 40 characters.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let s = raw.trim().to_ascii_lowercase();
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !(2..=40).contains(&s.len()) || !ok_chars || s.starts_with('-') || s.ends_with('-') {
            return Err(DomainError::new(
                "slug",
                "invalid_slug",
                "use 2 to 40 lowercase letters, digits and inner hyphens",
            ));
        }
        Ok(Slug(s))
    }

    /// A slug made from a site name: "Acme Bank & Co." becomes "acme-bank-co".
    pub fn from_name(name: &SiteName) -> Result<Self, DomainError> {
        let mut out = String::new();
        for c in name.as_str().chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
        }
        let out = out.trim_end_matches('-');
        let out: String = out.chars().take(40).collect();
        Slug::parse(out.trim_end_matches('-'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address, normalised to lowercase. Personal data: `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let s = raw.trim().to_lowercase();
        let bad = || DomainError::new("email", "invalid_email", "is not a valid email address");
        if s.len() > 254 || has_forbidden_chars(&s) || s.contains(char::is_whitespace) {
            return Err(bad());
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain.len() <= 253
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains(['@', '<', '>', '(', ')', ',', ';', ':', '\\', '"', '[', ']']);
        if !domain_ok || !local_ok {
            return Err(bad());
        }
        Ok(EmailAddress(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress([personal data])")
    }
}

/// A website origin where the widget may be embedded: `https://host[:port]` (or `http://` for
/// localhost and 127.0.0.1 during development). No path, query or wildcard.
#[derive(Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(transparent)]
pub struct AllowedOrigin(String);

impl AllowedOrigin {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let s = raw.trim().to_ascii_lowercase();
        let bad = |why: &str| {
            DomainError::new(
                "allowed_origins",
                "invalid_origin",
                format!("{raw:?} {why}"),
            )
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad("must start with https://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.len() > 253 {
            return Err(bad("needs a host name"));
        }
        if rest.contains(['/', '?', '#', '@', '*', ' ', '\\']) || has_forbidden_chars(rest) {
            return Err(bad(
                "must be only scheme://host[:port], without path or wildcard",
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                if p.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
                    return Err(bad("has an invalid port"));
                }
                (h, Some(p))
            }
            None => (rest, None),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with(['.', '-'])
            && !host.ends_with('.');
        if !host_ok {
            return Err(bad("has an invalid host name"));
        }
        let local = host == "localhost" || host == "127.0.0.1";
        match scheme {
            "https" => {}
            "http" if local => {}
            _ => return Err(bad("must use https:// (http:// only for localhost)")),
        }
        let _ = port;
        Ok(AllowedOrigin(format!("{scheme}://{rest}")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many chats an agent handles at once.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(transparent)]
pub struct Capacity(u32);

impl Capacity {
    pub const MAX: u32 = 50;
    pub fn parse(n: i64) -> Result<Self, DomainError> {
        if !(1..=i64::from(Self::MAX)).contains(&n) {
            return Err(DomainError::new(
                "capacity",
                "out_of_range",
                format!("must be between 1 and {}", Self::MAX),
            ));
        }
        Ok(Capacity(n as u32))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity(3)
    }
}

/// A new password that meets the policy: 12 to 128 characters, not only one character class,
/// and not containing the account's email name. (History and expiry come with the full policy.)
pub struct NewPassword(String);

impl NewPassword {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str, email: &EmailAddress) -> Result<Self, DomainError> {
        let n = raw.chars().count();
        if n < Self::MIN_CHARS {
            return Err(DomainError::new(
                "new_password",
                "password_too_short",
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if n > Self::MAX_CHARS {
            return Err(DomainError::new(
                "new_password",
                "password_too_long",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        let classes = [
            raw.chars().any(|c| c.is_lowercase()),
            raw.chars().any(|c| c.is_uppercase()),
            raw.chars().any(|c| c.is_numeric()),
            raw.chars().any(|c| !c.is_alphanumeric()),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if classes < 2 {
            return Err(DomainError::new(
                "new_password",
                "password_too_simple",
                "mix at least two of: lowercase, uppercase, digits, symbols",
            ));
        }
        let local = email.as_str().split('@').next().unwrap_or_default();
        if local.len() >= 3 && raw.to_lowercase().contains(local) {
            return Err(DomainError::new(
                "new_password",
                "password_contains_email",
                "must not contain your email name",
            ));
        }
        Ok(NewPassword(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            SiteName::parse("  Acme  ").map(|n| n.to_string()),
            Ok("Acme".into())
        );
        assert_eq!(SiteName::parse("   ").unwrap_err().code, "required");
        assert_eq!(
            SiteName::parse(&"x".repeat(101)).unwrap_err().code,
            "too_long"
        );
        assert_eq!(
            SiteName::parse("a\u{202E}b").unwrap_err().code,
            "invalid_characters"
        );
        assert_eq!(
            DepartmentName::parse("line\nbreak").unwrap_err().code,
            "invalid_characters"
        );
        // Script-ish and SQL-ish text is just text: accepted, stored and shown as text.
        assert!(DepartmentName::parse("<script>alert(1)</script>").is_ok());
        assert!(DepartmentName::parse("'; DROP TABLE users; --").is_ok());
    }

    #[test]
    fn slugs() {
        let name = SiteName::parse("Acme Bank & Co.").unwrap();
        assert_eq!(Slug::from_name(&name).unwrap().as_str(), "acme-bank-co");
        assert!(Slug::parse("-x").is_err());
        assert!(Slug::parse("a").is_err());
        assert!(Slug::parse("ok-1").is_ok());
        assert!(Slug::from_name(&SiteName::parse("!!!").unwrap()).is_err());
    }

    #[test]
    fn emails() {
        assert_eq!(
            EmailAddress::parse(" Admin@Acme.TEST ").unwrap().as_str(),
            "admin@acme.test"
        );
        for bad in [
            "", "x", "a@b", "a@.b", "a b@c.d", "<a>@c.d", "a@b..c", "a@b\n.co",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(
            format!("{:?}", EmailAddress::parse("a@b.co").unwrap()),
            "EmailAddress([personal data])"
        );
    }

    #[test]
    fn origins() {
        assert_eq!(
            AllowedOrigin::parse("https://Shop.Example.com/")
                .unwrap()
                .as_str(),
            "https://shop.example.com"
        );
        assert!(AllowedOrigin::parse("http://localhost:3000").is_ok());
        for bad in [
            "shop.example.com",
            "http://shop.example.com",
            "https://*.example.com",
            "https://a.com/path",
            "https://a.com:0",
            "javascript://x",
            "https://",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn password_policy() {
        let email = EmailAddress::parse("jane.doe@acme.test").unwrap();
        assert_eq!(
            NewPassword::parse("short1!", &email).unwrap_err().code,
            "password_too_short"
        );
        assert_eq!(
            NewPassword::parse("alllowercaseletters", &email)
                .unwrap_err()
                .code,
            "password_too_simple"
        );
        assert_eq!(
            NewPassword::parse("Jane.Doe-2026-secret", &email)
                .unwrap_err()
                .code,
            "password_contains_email"
        );
        assert!(NewPassword::parse("correct horse battery 9", &email).is_ok());
        assert_eq!(
            NewPassword::parse(&"Ab1".repeat(50), &email)
                .unwrap_err()
                .code,
            "password_too_long"
        );
    }

    #[test]
    fn capacity_bounds() {
        assert!(Capacity::parse(0).is_err());
        assert!(Capacity::parse(51).is_err());
        assert_eq!(Capacity::parse(5).unwrap().get(), 5);
    }
}
