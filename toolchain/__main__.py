"""``python -m toolchain`` and the ``vst`` script.

Ctrl-C handling and the standard streams (``toolchain.process``) are set up
before click or any other import of the command line, so an interrupt at any
point after this file starts is one line and exit 130.
"""


def main() -> None:
    from toolchain import process

    process.install()
    try:
        from toolchain.cli import main as run_cli

        run_cli()
    except KeyboardInterrupt:          # before or after click's own handling
        process.exit_interrupted()


if __name__ == "__main__":
    main()
