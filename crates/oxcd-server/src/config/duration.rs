//! Go's `time.ParseDuration`, which etcd uses for every duration flag
//! (`5s`, `1h30m`, `100ms`, `1.5h`) and for periodic auto-compaction
//! retention.

/// Parses a Go duration string into signed nanoseconds.
///
/// Accepts `[-+]?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+` or a bare `0`,
/// exactly as Go does. Errors carry Go's wording (`time: invalid duration
/// "x"`, `time: missing unit in duration "1"`, `time: unknown unit "d" in
/// duration "1d"`).
///
/// # Errors
/// Any text Go would reject, or a value beyond ±2^63 ns.
pub fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration \"{orig}\"");
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            neg = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    // u128 so that Go's overflow boundary (1<<63) is checked without wrapping.
    let mut total: u128 = 0;
    while !s.is_empty() {
        let b = s.as_bytes()[0];
        if !(b == b'.' || b.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration \"{orig}\""));
        }
        let unit_str = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u128 = match unit_str {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit \"{unit_str}\" in duration \"{orig}\""
                ))
            }
        };
        let limit: u128 = 1 << 63;
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse::<u128>().map_err(|_| invalid())?
        };
        if whole > limit / unit {
            return Err(invalid());
        }
        let mut v = whole * unit;
        if !frac_part.is_empty() {
            // Go scales the fraction through float64, truncating.
            let f: f64 = format!("0.{frac_part}").parse().map_err(|_| invalid())?;
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let extra = (f * unit as f64) as u128;
            v += extra;
            if v > limit {
                return Err(invalid());
            }
        }
        total += v;
        if total > limit {
            return Err(invalid());
        }
    }
    if neg {
        #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
        return Ok((total as i128).wrapping_neg() as i64);
    }
    i64::try_from(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration;

    #[test]
    fn go_duration_table() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5_000_000_000),
            ("100ms", 100_000_000),
            ("2h", 7_200_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("1.5h", 5_400_000_000_000),
            (".5s", 500_000_000),
            ("1us", 1_000),
            ("1µs", 1_000),
            ("-1s", -1_000_000_000),
            ("+3ns", 3),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(*want), "{s}");
        }
        for bad in [
            "",
            "5",
            "s",
            "1d",
            "-",
            ".s",
            "1.2.3s",
            "9999999999999999999h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad} should fail");
        }
        assert_eq!(
            parse_go_duration("5").unwrap_err(),
            "time: missing unit in duration \"5\""
        );
    }
}
