"""sslfer-prep that SIGKILLs itself after the N-th finished task of one phase, for the resume tests:
`python -c "...; from prep_killed import main; main()" PHASE:N ARGS...` (phase extract, swap or shard).

It wraps preprocess.runner.run_tasks, the test seam, so production code carries no fault-injection hook.
"""
import os
import signal
import sys


def main() -> None:
    from preprocess import cli, runner

    phase, _, count = sys.argv.pop(1).partition(":")
    limit = int(count)
    run_tasks = runner.run_tasks

    def killing_run_tasks(tasks, options, name, on_done):
        if name != phase:
            return run_tasks(tasks, options, name, on_done)
        done = 0

        def counted(result):
            nonlocal done
            on_done(result)
            done += 1
            if done >= limit:
                os.kill(os.getpid(), signal.SIGKILL)

        return run_tasks(tasks, options, name, counted)

    runner.run_tasks = killing_run_tasks
    cli.main()
