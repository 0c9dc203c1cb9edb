//! The page: HTML, CSS and JS built into the binary (no external asset, so it works offline),
//! served live (the data then comes over `/events`) or written as a static report with the data
//! inlined.

use std::path::Path;

use serde_json::Value;

use crate::error::Error;

const HTML: &str = include_str!("assets/page.html");
const CSS: &str = include_str!("assets/page.css");
const JS: &str = include_str!("assets/page.js");

/// The page; `data` inlined makes it a static snapshot, `None` a live page.
pub fn page(data: Option<&Value>) -> String {
    let data = data.map_or_else(|| "null".to_string(), |d| inline_json(&d.to_string()));
    // Our own text first, the data last: nothing in the data is taken for a marker.
    HTML.replacen("/*CSS*/", CSS, 1)
        .replacen("/*JS*/", JS, 1)
        .replacen("/*DATA*/", &data, 1)
}

/// JSON that is safe inside a `<script>` element: no `<`, `>` or `&` (so no `</script>` or
/// `<!--`), and no U+2028/2029 line separators.
fn inline_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `--rotation-report FILE.html`: the page with `snap` inlined, written atomically (0600, like
/// every file we write; it holds no secret, so it may be shared or kept as a CI artifact).
pub fn write_report(path: &Path, snap: &Value) -> Result<(), Error> {
    crate::files::write_atomic(path, page(Some(snap)).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_live_page_has_no_data_and_no_external_reference() {
        let p = page(None);
        assert!(p.contains(r#"<script id="pool-data" type="application/json">null</script>"#));
        assert!(!p.contains("/*CSS*/") && !p.contains("/*JS*/"));
        // The SVG namespace is a name, not a fetch.
        let p = p.replace("\"http://www.w3.org/2000/svg\"", "");
        for outside in ["http://", "https://", "src=", "href=", "@import", "url("] {
            assert!(!p.contains(outside), "the page refers outside: {outside}");
        }
    }

    #[test]
    fn inlined_data_cannot_close_the_script() {
        let p = page(Some(
            &json!({ "label": "</script><script>alert(1)</script>/*JS*/" }),
        ));
        assert_eq!(p.matches("</script>").count(), 2, "only the page's own two");
        assert!(p.contains(r#"\u003c/script\u003e"#));
        let start = p.find("application/json\">").unwrap() + "application/json\">".len();
        let end = start + p[start..].find("</script>").unwrap();
        let back: Value = serde_json::from_str(&p[start..end]).unwrap();
        assert_eq!(back["label"], "</script><script>alert(1)</script>/*JS*/");
    }
}
