//! Identity's rules, free of I/O: phone normalisation, member numbers, input validation and
//! how a resolve request maps onto the customers it names.

use std::fmt;

/// A phone number in E.164: `+`, country calling code and subscriber number, 8 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    /// Normalises common notations to E.164: spaces, dots, dashes and brackets are dropped;
    /// `00` is read as `+`; a national number (optionally with a trunk `0`) gets
    /// `default_calling_code`.
    pub fn parse(raw: &str, default_calling_code: &str) -> Result<Phone, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".into());
        }
        let mut digits = String::with_capacity(trimmed.len());
        let mut international = false;
        for (i, c) in trimmed.chars().enumerate() {
            match c {
                '+' if i == 0 => international = true,
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' | '/' => {}
                _ => return Err(format!("unexpected character {c:?} in a phone number")),
            }
        }
        if !international {
            if let Some(rest) = digits.strip_prefix("00") {
                digits = rest.to_owned();
            } else {
                let national = digits.strip_prefix('0').unwrap_or(&digits);
                digits = format!("{default_calling_code}{national}");
            }
        }
        if digits.starts_with('0') {
            return Err("a country calling code never starts with 0".into());
        }
        if !(8..=15).contains(&digits.len()) {
            return Err("an international number has 8 to 15 digits".into());
        }
        Ok(Phone(format!("+{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For logs: the calling code and last three digits only.
    pub fn masked(&self) -> MaskedPhone<'_> {
        MaskedPhone(&self.0)
    }
}

/// Displays a phone number with all but its first three and last three characters hidden.
pub struct MaskedPhone<'a>(pub &'a str);

impl fmt::Display for MaskedPhone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() <= 6 {
            return f.write_str("***");
        }
        for (i, c) in chars.iter().enumerate() {
            if i < 3 || i >= chars.len() - 3 {
                write!(f, "{c}")?;
            } else {
                f.write_str("*")?;
            }
        }
        Ok(())
    }
}

/// The Luhn check digit for a string of digits.
pub fn luhn_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// A member number: a nine-digit sequence number and its Luhn check digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberNumber(String);

impl MemberNumber {
    pub fn from_sequence(n: i64) -> MemberNumber {
        let body = format!("{n:09}");
        let check = luhn_digit(&body);
        MemberNumber(format!("{body}{check}"))
    }

    /// Accepts what people type (spaces and dashes allowed); refuses a wrong check digit.
    pub fn parse(raw: &str) -> Result<MemberNumber, String> {
        let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits.len() != 10 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err("a member number has 10 digits".into());
        }
        let (body, check) = digits.split_at(9);
        if check.parse::<u32>().ok() != Some(luhn_digit(body)) {
            return Err("the check digit does not match; is a digit mistyped?".into());
        }
        Ok(MemberNumber(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A customer's name: trimmed, not blank, at most 200 characters.
pub fn parse_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("must not be empty or blank".into());
    }
    if name.chars().count() > 200 {
        return Err("must be at most 200 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_owned())
}

/// A plausible e-mail address, lower-cased domain.
pub fn parse_email(raw: &str) -> Result<String, String> {
    let email = raw.trim();
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("must look like name@example.com".into());
    };
    if local.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || email.chars().any(char::is_whitespace)
        || email.len() > 254
    {
        return Err("must look like name@example.com".into());
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// A channel's own id for a customer (an e-shop account, a social id): 1 to 200 printable
/// characters.
pub fn parse_external_id(raw: &str) -> Result<String, String> {
    let id = raw.trim();
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 200 || id.chars().any(char::is_control) {
        return Err("must be at most 200 printable characters".into());
    }
    Ok(id.to_owned())
}

/// What a resolve does, given the customers each of its keys found (already following
/// merge aliases).
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution<Id> {
    /// All keys that matched point at this customer.
    Existing(Id),
    /// No key matched: create a customer.
    Create,
}

/// A resolve whose keys name different customers.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict<Id> {
    pub matches: Vec<(&'static str, Id)>,
}

pub fn resolve<Id: PartialEq + Clone>(
    found: &[(&'static str, Option<Id>)],
) -> Result<Resolution<Id>, Conflict<Id>> {
    let matches: Vec<(&'static str, Id)> = found
        .iter()
        .filter_map(|(key, id)| id.clone().map(|id| (*key, id)))
        .collect();
    match matches.first() {
        None => Ok(Resolution::Create),
        Some((_, first)) if matches.iter().all(|(_, id)| id == first) => {
            Ok(Resolution::Existing(first.clone()))
        }
        Some(_) => Err(Conflict { matches }),
    }
}

/// Passwords: at least 12 characters, at most 256.
pub fn check_password(raw: &str) -> Result<(), String> {
    let n = raw.chars().count();
    if n < 12 {
        return Err("must be at least 12 characters".into());
    }
    if n > 256 {
        return Err("must be at most 256 characters".into());
    }
    Ok(())
}

/// Staff logins: 3 to 64 of lower-case letters, digits, `.`, `_`, `-`, `@`.
pub fn parse_login(raw: &str) -> Result<String, String> {
    let login = raw.trim().to_ascii_lowercase();
    if !(3..=64).contains(&login.len())
        || !login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err("3 to 64 characters: letters, digits, '.', '_', '-', '@'".into());
    }
    Ok(login)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(
            Phone::parse("+44 7700 900123", "1").unwrap().as_str(),
            "+447700900123"
        );
        assert_eq!(
            Phone::parse("0044 7700-900123", "1").unwrap().as_str(),
            "+447700900123"
        );
        assert_eq!(
            Phone::parse("07700 900123", "44").unwrap().as_str(),
            "+447700900123"
        );
        assert_eq!(
            Phone::parse("(415) 555-2671", "1").unwrap().as_str(),
            "+14155552671"
        );
        assert_eq!(
            Phone::parse("138 0013 8000", "86").unwrap().as_str(),
            "+8613800138000"
        );
    }

    #[test]
    fn malformed_phones_are_refused() {
        for bad in [
            "",
            "   ",
            "+44 abc",
            "12",
            "+0123456789",
            "+1234567890123456",
            "44+1",
        ] {
            assert!(
                Phone::parse(bad, "44").is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn phones_are_masked() {
        let p = Phone::parse("+447700900123", "1").unwrap();
        assert_eq!(p.masked().to_string(), "+44*******123");
    }

    #[test]
    fn luhn_matches_known_values() {
        // Well-known Luhn examples.
        assert_eq!(luhn_digit("7992739871"), 3);
        assert_eq!(luhn_digit("100000000"), 8);
    }

    #[test]
    fn member_numbers_round_trip_and_catch_typos() {
        let m = MemberNumber::from_sequence(100_000_123);
        assert_eq!(MemberNumber::parse(m.as_str()).unwrap(), m);
        assert!(MemberNumber::parse("123").is_err());
    }

    proptest! {
        #[test]
        fn any_single_digit_typo_is_caught(n in 100_000_000i64..999_999_999, pos in 0usize..10, delta in 1u32..10) {
            let good = MemberNumber::from_sequence(n);
            let mut chars: Vec<char> = good.as_str().chars().collect();
            let d = chars[pos].to_digit(10).unwrap();
            chars[pos] = char::from_digit((d + delta) % 10, 10).unwrap();
            let typo: String = chars.into_iter().collect();
            prop_assert!(MemberNumber::parse(&typo).is_err());
        }

        #[test]
        fn adjacent_swaps_are_caught(n in 100_000_000i64..999_999_999, pos in 0usize..9) {
            let good = MemberNumber::from_sequence(n);
            let mut chars: Vec<char> = good.as_str().chars().collect();
            prop_assume!(chars[pos] != chars[pos + 1]);
            // Luhn misses 09 <-> 90 only.
            prop_assume!(!matches!((chars[pos], chars[pos + 1]), ('0', '9') | ('9', '0')));
            chars.swap(pos, pos + 1);
            let typo: String = chars.into_iter().collect();
            prop_assert!(MemberNumber::parse(&typo).is_err());
        }
    }

    #[test]
    fn names_and_emails_are_checked() {
        assert_eq!(parse_name("  Mei Lin ").unwrap(), "Mei Lin");
        assert!(parse_name("   ").is_err());
        assert_eq!(parse_email("Mei@Example.COM").unwrap(), "Mei@example.com");
        assert!(parse_email("mei@").is_err());
        assert!(parse_email("mei example.com").is_err());
    }

    #[test]
    fn resolution_follows_the_keys() {
        assert_eq!(resolve::<u8>(&[("phone", None)]), Ok(Resolution::Create));
        assert_eq!(
            resolve(&[("phone", Some(1)), ("channel_account", None)]),
            Ok(Resolution::Existing(1))
        );
        assert_eq!(
            resolve(&[("phone", Some(1)), ("member_number", Some(1))]),
            Ok(Resolution::Existing(1))
        );
        assert!(resolve(&[("phone", Some(1)), ("channel_account", Some(2))]).is_err());
    }
}
