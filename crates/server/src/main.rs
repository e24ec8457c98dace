//! The `junction` binary: the broker with its built-in plugins.

/// mimalloc instead of glibc's malloc: the hot paths allocate per message (the message, its
/// routing key, queue entries), and glibc's malloc and free showed as a third of the broker's
/// CPU under load (bench/RESULTS.md, issue 14). Its `no_thp` feature keeps transparent huge
/// pages off, which keeps idle memory at glibc's level.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    junction::Junction::new().run()
}
