//! Human durations in the config file: `250ms`, `5s`, `2m` (or `2min`), `1h`, `90d`, and
//! compounds from the largest unit down: `1h30m`, `1d12h`, `2m30s`.

use std::time::Duration;

/// Units, largest first, with their length in milliseconds. A compound names them in this
/// order, each once (`m` and `min` are the same unit).
const UNITS: &[(&[&str], u64)] = &[
    (&["d"], 86_400_000),
    (&["h"], 3_600_000),
    (&["m", "min"], 60_000),
    (&["s"], 1_000),
    (&["ms"], 1),
];

/// Reads a duration such as `30s` or `1h30m`. A bare number is refused: the unit must be said.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let units = "use ms, s, m (or min), h or d, e.g. 90s, 1h30m";
    if text.is_empty() {
        return Err(format!("an empty duration ({units})"));
    }
    let mut rest = text;
    let mut millis: u64 = 0;
    // Index into UNITS of the last unit read: the next one must be smaller.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}` does not start with a whole number ({units})"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is too long"))?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..letters];
        rest = &rest[letters..];
        if unit.is_empty() {
            return Err(format!("`{text}` has no unit ({units})"));
        }
        let Some(index) = UNITS.iter().position(|(names, _)| names.contains(&unit)) else {
            return Err(format!("`{text}` has an unknown unit `{unit}` ({units})"));
        };
        if last.is_some_and(|l| index <= l) {
            return Err(format!(
                "`{text}` repeats a unit or puts a larger one after a smaller one (write e.g. 1h30m)"
            ));
        }
        last = Some(index);
        millis = n
            .checked_mul(UNITS[index].1)
            .and_then(|part| millis.checked_add(part))
            .ok_or_else(|| format!("`{text}` is too long"))?;
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_unit_reads_as_its_length() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90min"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
    }

    /// Compounds add up their parts, largest unit first.
    #[test]
    fn a_compound_duration_is_the_sum_of_its_parts() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30min"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(
            parse_duration("2m30s500ms"),
            Ok(Duration::from_millis(150_500))
        );
    }

    #[test]
    fn a_number_without_unit_or_with_a_strange_unit_is_refused() {
        for bad in [
            "30",
            "5 s",
            "5w",
            "s",
            "",
            "99999999999999999999d",
            "1h30",
            "30m1h",
            "1h1h",
            "1m2min",
            "1h 30m",
            "-1s",
            "1.5h",
            "h1",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_duration("213503982334602d").is_err(),
            "overflows u64 milliseconds"
        );
    }

    proptest! {
        /// Any choice of parts, written largest unit first (either spelling of minutes),
        /// reads as their sum.
        #[test]
        fn any_ordered_compound_reads_as_its_sum(
            parts in proptest::collection::vec(proptest::option::of(0u64..100_000), 5),
            long_minutes in any::<bool>(),
        ) {
            let mut text = String::new();
            let mut expected = 0u64;
            for (part, (names, millis)) in parts.iter().zip(UNITS) {
                if let Some(n) = part {
                    let name = if long_minutes && names.len() > 1 { names[1] } else { names[0] };
                    text.push_str(&format!("{n}{name}"));
                    expected += n * millis;
                }
            }
            prop_assume!(!text.is_empty());
            prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(expected)));
        }

        /// Arbitrary text never panics the parser, and whatever it accepts is made only of
        /// digits and unit letters.
        #[test]
        fn arbitrary_text_is_read_or_refused_without_panic(text in "\\PC{0,12}") {
            if parse_duration(&text).is_ok() {
                prop_assert!(text.trim().chars().all(|c| c.is_ascii_alphanumeric()));
            }
        }
    }
}
