//! `Token`: the private-app access token. It is a secret: `Debug` and `Display` print
//! `***`, so no log line, error or panic can show it.

use std::fmt;

/// A HubSpot private-app (Bearer) token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string.
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }

    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_secret() {
        let t = Token::new("pat-na1-secret");
        assert_eq!(format!("{t:?} {t}"), "Token(***) ***");
    }
}
