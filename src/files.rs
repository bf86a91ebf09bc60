//! Static file routes (`static: { dir, index }`): content types, `ETag` /
//! `If-None-Match`, and no way out of `dir` (`..`, encoded `%2e%2e`,
//! absolute paths, symlinks pointing outside).

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::config::StaticSettings;
use crate::error::{Body, ErrorCode, HttpError, empty, full};
use crate::router::pattern::percent_decode;

/// Largest file served (static routes are for pages and assets).
pub const MAX_FILE: u64 = 64 << 20;

pub async fn serve(
    settings: &StaticSettings,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return HttpError::new(
            ErrorCode::MethodNotAllowed,
            "static files answer GET and HEAD",
        )
        .into_response();
    }
    let Some(relative) = safe_relative(path) else {
        return HttpError::new(ErrorCode::InvalidPath, "invalid file path").into_response();
    };
    let mut file = settings.dir.join(&relative);
    if relative.as_os_str().is_empty() || path.ends_with('/') {
        match &settings.index {
            Some(index) => file = file.join(index),
            None => return not_found(),
        }
    }
    match tokio::fs::metadata(&file).await {
        Ok(m) if m.is_dir() => match &settings.index {
            Some(index) => file = file.join(index),
            None => return not_found(),
        },
        Ok(_) => {}
        Err(_) => return not_found(),
    }
    // Symlinks must not lead outside the directory.
    let (Ok(root), Ok(real)) = (
        tokio::fs::canonicalize(&settings.dir).await,
        tokio::fs::canonicalize(&file).await,
    ) else {
        return not_found();
    };
    if !real.starts_with(&root) {
        return not_found();
    }
    let Ok(meta) = tokio::fs::metadata(&real).await else {
        return not_found();
    };
    if !meta.is_file() || meta.len() > MAX_FILE {
        return not_found();
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!("\"{:x}-{:x}\"", meta.len(), modified);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
        });
    let mut response = if matches {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if method == Method::HEAD {
        Response::new(empty())
    } else {
        match tokio::fs::read(&real).await {
            Ok(bytes) => Response::new(full(bytes)),
            Err(_) => return not_found(),
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if !matches {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(&real)),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn not_found() -> Response<Body> {
    HttpError::new(ErrorCode::NotFound, "no such file").into_response()
}

/// The decoded path as a relative path with only normal components, or
/// `None` if it tries to leave the directory.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path)?;
    let mut out = PathBuf::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => continue,
            ".." => return None,
            s if s.contains('\\') || s.contains('\0') || s.contains(':') => return None,
            s => out.push(s),
        }
    }
    Some(out)
}

pub fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_rejected() {
        assert_eq!(safe_relative("/a/b.css"), Some(PathBuf::from("a/b.css")));
        assert_eq!(safe_relative("/"), Some(PathBuf::new()));
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/%2e%2e/x",
            "/%2E%2E/x",
            "/a\\..\\b",
            "/%00",
            "/c:/x",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
        assert_eq!(
            safe_relative("//etc/passwd"),
            Some(PathBuf::from("etc/passwd")),
            "absolute becomes relative"
        );
    }
}
