//! The `doorstep` binary: the command line in `cli/`, a thin shell over the `doorstep`
//! library. `src/main.rs` and `src/cli/` are the binary; every other file under `src/` is
//! the library, and the binary sees only its public API (the same API the server uses).

// Intake allocates many small JSON trees; mimalloc makes that markedly cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
