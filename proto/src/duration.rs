//! Durations as people write them in specs, flags and scenarios.

use std::time::Duration;

/// Parses `90s`, `10m`, `1h30m`, `500ms`, `2d`, or plain seconds; at most
/// 10 years (so the arithmetic on it never overflows).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const LIMIT: f64 = 10.0 * 365.0 * 86_400.0;
    let text = text.trim();
    let too_long = || format!("`{text}` is longer than 10 years");
    if let Ok(secs) = text.parse::<f64>() {
        return if !(secs.is_finite() && secs >= 0.0) {
            Err(format!("`{text}` is not a duration"))
        } else if secs > LIMIT {
            Err(too_long())
        } else {
            Ok(Duration::from_secs_f64(secs))
        };
    }
    let bad = || format!("`{text}` is not a duration (e.g. 90s, 10m, 1h30m)");
    let mut total = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let amount: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += amount * scale;
        if !total.is_finite() || total > LIMIT {
            return Err(too_long());
        }
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_stay_bounded() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("1e20").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
