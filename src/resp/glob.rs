//! Redis's glob patterns (SCAN MATCH): `*`, `?`, `[abc]`, `[^a-z]` and `\` escapes, matched
//! against raw bytes the way Redis's `stringmatchlen` does.
//!
//! The pattern is compiled once per SCAN call into tokens that each match one byte, except
//! `*`; matching is the two-pointer walk that backtracks only to the last star, so a hostile
//! pattern costs at most pattern length × key length steps, never exponential time.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Any,
    Star,
    Class { negated: bool, ranges: Vec<(u8, u8)> },
}

#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
    /// `*` alone: every key matches, without looking.
    everything: bool,
}

impl Glob {
    pub fn new(pattern: &[u8]) -> Glob {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            let token = match pattern[i] {
                b'*' => {
                    // Consecutive stars match what one does.
                    while i + 1 < pattern.len() && pattern[i + 1] == b'*' {
                        i += 1;
                    }
                    Token::Star
                }
                b'?' => Token::Any,
                b'\\' if i + 1 < pattern.len() => {
                    i += 1;
                    Token::Byte(pattern[i])
                }
                b'[' => {
                    let (token, end) = class(pattern, i + 1);
                    i = end;
                    token
                }
                b => Token::Byte(b),
            };
            tokens.push(token);
            i += 1;
        }
        let everything = tokens == [Token::Star];
        Glob { tokens, everything }
    }

    pub fn matches(&self, s: &[u8]) -> bool {
        if self.everything {
            return true;
        }
        let (mut p, mut i) = (0, 0);
        // Where to resume after the last star: (token after it, byte it swallowed up to).
        let mut resume: Option<(usize, usize)> = None;
        while i < s.len() {
            match self.tokens.get(p) {
                Some(Token::Star) => {
                    resume = Some((p + 1, i));
                    p += 1;
                    continue;
                }
                Some(t) if one(t, s[i]) => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            match resume {
                Some((after, swallowed)) => {
                    // Let the star take one more byte and try again from there.
                    p = after;
                    i = swallowed + 1;
                    resume = Some((after, swallowed + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Star)
    }
}

fn one(token: &Token, b: u8) -> bool {
    match token {
        Token::Byte(x) => *x == b,
        Token::Any => true,
        Token::Star => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi) != *negated
        }
    }
}

/// Parses a class starting after its `[`; returns it and the index of its `]` (or of the last
/// byte, when the pattern ends first: Redis then closes the class there).
fn class(pattern: &[u8], mut i: usize) -> (Token, usize) {
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            i += 1;
            ranges.push((pattern[i], pattern[i]));
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (a, b) = (pattern[i], pattern[i + 2]);
            ranges.push((a.min(b), a.max(b)));
            i += 2;
        } else {
            ranges.push((pattern[i], pattern[i]));
        }
        i += 1;
    }
    (Token::Class { negated, ranges }, i.min(pattern.len().saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p.as_bytes()).matches(s.as_bytes())
    }

    #[test]
    fn redis_glob_cases() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"), "reversed ranges are swapped");
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("h\\*llo", "h*llo"));
        assert!(!m("h\\*llo", "hello"));
        assert!(m("[\\]]", "]"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:names"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("a**b", "ab"));
        assert!(!m("abc", "ab"));
        assert!(!m("ab", "abc"));
        assert!(m("[abc", "b"), "an unclosed class closes at the end");
        assert!(m("[a-]", "a"));
        assert!(m("[a-]", "-"));
        assert!(m("ab\\", "ab\\"), "a trailing backslash is literal");
    }

    #[test]
    fn pathological_patterns_stay_polynomial() {
        let key = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(200));
        assert!(!m(&pattern, &key));
    }
}
