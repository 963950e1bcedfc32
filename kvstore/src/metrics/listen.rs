//! Where the metrics endpoint listens: an address, or off.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The `/metrics` address; written as `host:port`, or `""` to serve no metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricsListen(pub Option<SocketAddr>);

impl MetricsListen {
    pub const OFF: MetricsListen = MetricsListen(None);

    pub fn addr(self) -> Option<SocketAddr> {
        self.0
    }
}

impl Default for MetricsListen {
    fn default() -> Self {
        MetricsListen(Some(SocketAddr::from(([127, 0, 0, 1], 9091))))
    }
}

impl FromStr for MetricsListen {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "" => Ok(MetricsListen::OFF),
            addr => addr.parse().map(|addr| MetricsListen(Some(addr))),
        }
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = std::net::AddrParseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MetricsListen> for String {
    fn from(listen: MetricsListen) -> String {
        listen.to_string()
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_string_turns_metrics_off() {
        assert_eq!("".parse::<MetricsListen>().unwrap(), MetricsListen::OFF);
        assert_eq!(" ".parse::<MetricsListen>().unwrap().addr(), None);
    }

    #[test]
    fn an_address_round_trips_through_its_text() {
        let listen: MetricsListen = "0.0.0.0:9100".parse().unwrap();
        assert_eq!(listen.to_string(), "0.0.0.0:9100");
        assert_eq!(MetricsListen::OFF.to_string(), "");
    }

    #[test]
    fn a_malformed_address_is_refused() {
        assert!("localhost".parse::<MetricsListen>().is_err());
        assert!("1.2.3.4:99999".parse::<MetricsListen>().is_err());
    }
}
