//! The browser demo (`examples/web/demo/`), embedded in the binary and served by the HTTP
//! listener at `/demo/`: a page that shows sensor readings live over STOMP-over-WebSocket and
//! sends commands, with the @stomp/stompjs bundle it uses.

use junction_transport::StaticFile;

/// The demo's files.
pub const FILES: [StaticFile; 3] = [
    StaticFile {
        path: "/demo/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../examples/web/demo/index.html"),
    },
    StaticFile {
        path: "/demo/index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../examples/web/demo/index.html"),
    },
    StaticFile {
        path: "/demo/stomp.umd.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../examples/web/demo/stomp.umd.min.js"),
    },
];
