//! `maxResults` and `nextToken`: a page of items ordered by a key, and a token that names
//! the last key given, so that items added or removed meanwhile never shift a page.

use super::{ApiError, ApiResult};

/// The default and the largest page, as AWS Batch's List and Describe operations have them.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// The page after `token` of `items` (sorted by their keys here), and the next token.
pub fn page<T>(
    mut items: Vec<(String, T)>,
    max_results: Option<i64>,
    token: Option<&str>,
) -> ApiResult<(Vec<T>, Option<String>)> {
    let max = match max_results {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::client(format!("maxResults must be between 1 and {MAX_PAGE}, not {n}")));
        }
    };
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let start = match token.filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => {
            let after = decode(t)
                .ok_or_else(|| ApiError::client(format!("nextToken {t:?} is not a token Barge gave")))?;
            items.partition_point(|(k, _)| *k <= after)
        }
    };
    let rest = items.len().saturating_sub(start);
    let mut taken: Vec<(String, T)> = items.into_iter().skip(start).take(max).collect();
    let next = (rest > max).then(|| taken.last().map(|(k, _)| encode(k))).flatten();
    Ok((taken.drain(..).map(|(_, v)| v).collect(), next))
}

fn encode(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_on_from_their_token_and_the_last_has_none() {
        let items = || (0..7).map(|i| (format!("k{i}"), i)).collect::<Vec<_>>();
        let (a, t) = page(items(), Some(3), None).unwrap();
        assert_eq!(a, [0, 1, 2]);
        let (b, t) = page(items(), Some(3), t.as_deref()).unwrap();
        assert_eq!(b, [3, 4, 5]);
        let (c, t) = page(items(), Some(3), t.as_deref()).unwrap();
        assert_eq!((c, t), (vec![6], None));
        // A removed item does not shift the next page.
        let (_, t) = page(items(), Some(2), None).unwrap();
        let fewer: Vec<_> = items().into_iter().filter(|(_, v)| *v != 0).collect();
        assert_eq!(page(fewer, Some(2), t.as_deref()).unwrap().0, [2, 3]);
        assert_eq!(page(items(), Some(7), None).unwrap().1, None);
    }

    #[test]
    fn bad_sizes_and_tokens_are_refused() {
        assert!(page(vec![("a".to_string(), 1)], Some(0), None).is_err());
        assert!(page(vec![("a".to_string(), 1)], Some(1001), None).is_err());
        assert!(page(vec![("a".to_string(), 1)], None, Some("zz")).is_err());
    }
}
