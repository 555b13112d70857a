//! Go durations (`30s`, `1m0s`, `1h2m3.5s`, `500ms`, `-1s`): the one parser
//! for the whole workspace (the daemon's configuration, the plugin section,
//! conformance scenarios, `?timeout=` of `/debug/barrier`).
//!
//! kube-proxy's configuration holds `metav1.Duration`s, which Go reads with
//! `time.ParseDuration`; a value it refuses must be refused here with the
//! same words, and a value it accepts must mean the same. Why not a crate:
//! kube-core's `Duration` (kube-rs' `metav1.Duration`) panics on overflow
//! (`Duration::mul_f64` on `99999999999999999999999h`, found by our fuzzer
//! with an earlier parser) and reads `""` as zero; jiff's friendly format
//! and humantime accept spellings Go refuses (`1 hour`, `PT1H`, `2 days`).
//! So this follows Go's grammar exactly, in integer nanoseconds, with Go's
//! overflow rule (more than 2^63 - 1 ns is invalid).

use std::fmt;
use std::time::Duration;

/// A Go `time.Duration`: signed nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(i64);

/// Why a string is not a Go duration; the messages are Go's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("time: invalid duration {0:?}")]
    Invalid(String),
    #[error("time: missing unit in duration {0:?}")]
    MissingUnit(String),
    #[error("time: unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit { unit: String, text: String },
}

const NS: u64 = 1;
const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
/// 2^63: one more than the largest duration, the bound of a negative one.
const LIMIT: u64 = 1 << 63;

fn unit(name: &str) -> Option<u64> {
    Some(match name {
        "ns" => NS,
        // U+00B5 (micro sign) and U+03BC (Greek mu), as Go accepts both.
        "us" | "\u{b5}s" | "\u{3bc}s" => US,
        "ms" => MS,
        "s" => SEC,
        "m" => MIN,
        "h" => HOUR,
        _ => return None,
    })
}

impl GoDuration {
    pub const ZERO: GoDuration = GoDuration(0);

    pub const fn from_nanos(ns: i64) -> GoDuration {
        GoDuration(ns)
    }

    /// From a std duration, saturating at Go's largest duration (about 292 years).
    pub fn from_std(d: Duration) -> GoDuration {
        GoDuration(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The std duration; `None` when negative.
    pub fn to_std(self) -> Option<Duration> {
        u64::try_from(self.0).ok().map(Duration::from_nanos)
    }

    /// Whole seconds, truncated toward zero (what kube-proxy writes to sysctls).
    pub const fn whole_seconds(self) -> i64 {
        self.0 / SEC as i64
    }

    /// Parses as Go's `time.ParseDuration` does: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or `0`.
    pub fn parse(text: &str) -> Result<GoDuration, DurationError> {
        let invalid = || DurationError::Invalid(text.to_string());
        let mut s = text;
        let mut negative = false;
        if let Some(rest) = s.strip_prefix('-') {
            negative = true;
            s = rest;
        } else if let Some(rest) = s.strip_prefix('+') {
            s = rest;
        }
        if s == "0" {
            return Ok(GoDuration(0));
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !s.is_empty() {
            if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
                return Err(invalid());
            }
            // The integer part.
            let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let mut value: u64 = 0;
            for d in s[..int_len].bytes() {
                value = value.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))).ok_or_else(invalid)?;
                if value > LIMIT {
                    return Err(invalid());
                }
            }
            let had_int = int_len > 0;
            s = &s[int_len..];
            // The fraction: digits kept while they fit, the rest only consumed (as Go).
            let (mut frac, mut scale, mut had_frac) = (0u64, 1f64, false);
            if let Some(rest) = s.strip_prefix('.') {
                let frac_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                had_frac = frac_len > 0;
                let mut overflow = false;
                for d in rest[..frac_len].bytes() {
                    if overflow {
                        continue;
                    }
                    match frac.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))) {
                        Some(v) if v <= LIMIT => {
                            frac = v;
                            scale *= 10.0;
                        }
                        _ => overflow = true,
                    }
                }
                s = &rest[frac_len..];
            }
            if !had_int && !had_frac {
                return Err(invalid());
            }
            let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
            if unit_len == 0 {
                return Err(DurationError::MissingUnit(text.to_string()));
            }
            let name = &s[..unit_len];
            let per = unit(name)
                .ok_or_else(|| DurationError::UnknownUnit { unit: name.to_string(), text: text.to_string() })?;
            s = &s[unit_len..];
            if value > LIMIT / per {
                return Err(invalid());
            }
            value *= per;
            if frac > 0 {
                // Float arithmetic here is Go's own (`float64(f) * (float64(unit) / scale)`).
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "as Go computes it")]
                let part = (frac as f64 * (per as f64 / scale)) as u64;
                value = value.checked_add(part).filter(|v| *v <= LIMIT).ok_or_else(invalid)?;
            }
            total = total.checked_add(value).filter(|v| *v <= LIMIT).ok_or_else(invalid)?;
        }
        if negative {
            // -2^63 is the one value whose magnitude is LIMIT.
            return Ok(GoDuration(0i64.wrapping_sub_unsigned(total)));
        }
        i64::try_from(total).map(GoDuration).map_err(|_| invalid())
    }
}

impl std::str::FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GoDuration::parse(s)
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration::from_std(d)
    }
}

/// Go's `Duration.String()`: `0s`, `1.5µs`, `250ms`, `1.5s`, `1m30s`, `24h0m0s`.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let u = self.0.unsigned_abs();
        let sign = if neg { "-" } else { "" };
        if u == 0 {
            return f.write_str("0s");
        }
        if u < SEC {
            let (per, name) = match u {
                u if u < US => return write!(f, "{sign}{u}ns"),
                u if u < MS => (US, "µs"),
                _ => (MS, "ms"),
            };
            return write!(f, "{sign}{}{name}", fixed(u / per, u % per, per));
        }
        let secs = u / SEC;
        let frac = u % SEC;
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        let s = fixed(s, frac, SEC);
        match (h, m) {
            (0, 0) => write!(f, "{sign}{s}s"),
            (0, m) => write!(f, "{sign}{m}m{s}s"),
            (h, m) => write!(f, "{sign}{h}h{m}m{s}s"),
        }
    }
}

/// `whole.fraction` with the fraction's trailing zeros dropped (Go's fmtFrac).
fn fixed(whole: u64, rest: u64, per: u64) -> String {
    if rest == 0 {
        return whole.to_string();
    }
    let digits = per.ilog10() as usize;
    let frac = format!("{rest:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

impl serde::Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads a string in Go's grammar, as `metav1.Duration` does (a number is refused).
impl<'de> serde::Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"1m0s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GoDuration, E> {
                GoDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses a duration that must not be negative, into a std one.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    GoDuration::parse(text)?.to_std().ok_or_else(|| DurationError::Invalid(text.to_string()))
}

/// Formats as Go does (`30s`, `1m0s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    GoDuration::from_std(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> i64 {
        GoDuration::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).as_nanos()
    }

    #[test]
    fn reads_what_go_reads() {
        // Cases from Go's time.ParseDuration documentation and behaviour.
        assert_eq!(ns("0"), 0);
        assert_eq!(ns("+0"), 0);
        assert_eq!(ns("-0"), 0);
        assert_eq!(ns("30s"), 30 * SEC as i64);
        assert_eq!(ns("1m0s"), 60 * SEC as i64);
        assert_eq!(ns("1h2m3.5s"), 3723 * SEC as i64 + 500 * MS as i64);
        assert_eq!(ns("500ms"), 500 * MS as i64);
        assert_eq!(ns("1.5h"), 5400 * SEC as i64);
        assert_eq!(ns("-1.5h"), -5400 * SEC as i64);
        assert_eq!(ns(".5s"), 500 * MS as i64);
        assert_eq!(ns("5.s"), 5 * SEC as i64);
        assert_eq!(ns("1µs"), 1000);
        assert_eq!(ns("1μs"), 1000);
        assert_eq!(ns("1us"), 1000);
        assert_eq!(ns("3ns"), 3);
        assert_eq!(ns("9223372036854775807ns"), i64::MAX);
        assert_eq!(ns("-9223372036854775808ns"), i64::MIN);
        assert_eq!(ns("0.100000000000000000000h"), 360 * SEC as i64);
    }

    #[test]
    fn refuses_what_go_refuses_with_gos_words() {
        for bad in ["", "-", "+", "3", "-.s", ".s", "s", "1.2.3s", "1 s", "1h 2m", "PT1H", "1hour", "x"] {
            assert!(GoDuration::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(GoDuration::parse("soon").unwrap_err().to_string(), r#"time: invalid duration "soon""#);
        assert_eq!(GoDuration::parse("5").unwrap_err().to_string(), r#"time: missing unit in duration "5""#);
        assert_eq!(GoDuration::parse("1x").unwrap_err().to_string(), r#"time: unknown unit "x" in duration "1x""#);
        // Overflow is an error, never a panic (the config fuzz target's input).
        for big in ["99999999999999999999999h", "9223372036854775808ns", "2562048h", "18446744073709551616s"] {
            assert!(matches!(GoDuration::parse(big), Err(DurationError::Invalid(_))), "{big}");
        }
    }

    #[test]
    fn prints_as_go_prints() {
        let cases = [
            ("0s", 0),
            ("1ns", 1),
            ("1.1µs", 1100),
            ("2.2ms", 2_200_000),
            ("250ms", 250_000_000),
            ("1.5s", 1_500_000_000),
            ("30s", 30 * SEC as i64),
            ("1m30s", 90 * SEC as i64),
            ("15m0s", 900 * SEC as i64),
            ("1h0m0s", 3600 * SEC as i64),
            ("24h0m0s", 86400 * SEC as i64),
            ("-1m0.5s", -(60 * SEC as i64 + 500 * MS as i64)),
        ];
        for (text, n) in cases {
            assert_eq!(GoDuration::from_nanos(n).to_string(), text);
            assert_eq!(ns(text), n, "{text} reads back");
        }
    }

    #[test]
    fn std_conversions() {
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(GoDuration::parse("90s").unwrap().whole_seconds(), 90);
        assert_eq!(GoDuration::parse("1500ms").unwrap().whole_seconds(), 1);
    }
}
