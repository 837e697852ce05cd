//! Human durations in the config file: `250ms`, `5s`, `2m`, `1h`, `90d`.

use std::time::Duration;

/// Reads a duration such as `30s`. A bare number is refused: the unit must be said.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_reads_as_its_length() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
    }

    #[test]
    fn a_number_without_unit_or_with_a_strange_unit_is_refused() {
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
