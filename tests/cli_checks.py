"""What a refusal on the command line looks like to the user: one `Error:` line, no traceback."""


def one_error_line(result, *fragments, code=1) -> str:
    """The single `Error:` line of a click result that exited with `code`, holding every fragment."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
