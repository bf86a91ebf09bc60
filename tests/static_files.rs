//! Static routes and the embedded browser client: content types, ETag /
//! If-None-Match, and no path traversal.

mod support;

use support::Pushgate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
listen: { http: ["127.0.0.1:0"] }
internal: { listen: "127.0.0.1:0" }
routes:
  - { name: assets, match: { path_prefix: "/assets" }, strip_prefix: "/assets", static: { dir: site } }
  - { name: site, match: { path_prefix: "/" }, static: { dir: site, index: index.html } }
"#;

async fn start() -> Pushgate {
    let dir = support::temp_dir("static");
    std::fs::create_dir_all(dir.join("site/css")).unwrap();
    std::fs::write(dir.join("site/index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(dir.join("site/css/app.css"), "body{}").unwrap();
    std::fs::write(dir.join("site/app.js"), "export {}").unwrap();
    std::fs::write(dir.join("secret.txt"), "outside the static dir").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("site/link.txt")).unwrap();
    Pushgate::start_in(&dir, CONFIG).await
}

#[tokio::test]
async fn files_have_content_types_and_index() {
    let pg = start().await;
    for (path, ty, body) in [
        ("/", "text/html; charset=utf-8", "<h1>home</h1>"),
        ("/css/app.css", "text/css; charset=utf-8", "body{}"),
        ("/app.js", "text/javascript; charset=utf-8", "export {}"),
        (
            "/assets/app.js",
            "text/javascript; charset=utf-8",
            "export {}",
        ),
    ] {
        let r = pg.client().get(pg.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], ty, "{path}");
        assert_eq!(r.text().await.unwrap(), body);
    }
    assert_eq!(
        pg.client()
            .get(pg.url("/missing.txt"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        pg.client()
            .post(pg.url("/app.js"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
}

#[tokio::test]
async fn etag_and_if_none_match_give_304() {
    let pg = start().await;
    let r = pg.client().get(pg.url("/app.js")).send().await.unwrap();
    let etag = r.headers()["etag"].clone();
    let again = pg
        .client()
        .get(pg.url("/app.js"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    let other = pg
        .client()
        .get(pg.url("/app.js"))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
}

/// Sends a raw request line (clients normalise `..`, so go below them).
async fn raw_status(pg: &Pushgate, target: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(pg.http).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out[9..12].parse().unwrap()
}

#[tokio::test]
async fn traversal_is_refused() {
    let pg = start().await;
    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/css/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/link.txt",
    ] {
        let status = raw_status(&pg, target).await;
        assert!(status == 400 || status == 404, "{target}: {status}");
    }
    // An absolute path in the URL is taken relative to the dir.
    assert_eq!(raw_status(&pg, "//etc/passwd").await, 404);
}

#[tokio::test]
async fn the_browser_client_is_served_on_every_public_listener() {
    let pg = start().await;
    let r = pg
        .client()
        .get(pg.url("/_pushgate/client.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = r.headers()["etag"].clone();
    let text = r.text().await.unwrap();
    assert!(text.contains("export function subscribe"));
    assert!(text.contains("globalThis.pushgate"));
    let cached = pg
        .client()
        .get(pg.url("/_pushgate/client.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
}
