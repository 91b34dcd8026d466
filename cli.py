"""The command-line frame of the tools that read a results folder (plot.py, report.py, verify.py): their folder
flags, and every way they can fail ending in one line and an exit code."""
import argparse
import os

import data
import program
import results


def tool_parser(prog, doc, results_help, data_help=None):
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=os.path.join(results.REPO, "results"), help=results_help)
    if data_help:
        p.add_argument("--data", default=data.DEFAULT_ROOT, help=data_help)
    return p


def run_tool(p, args, job):
    """job() with every way it can fail as one line: a folder that is not there, a symbolic link in it or a damaged
    file (exit 2), a write that fails (1), Ctrl-C (130); files are replaced whole, so none is left half-written."""
    if not os.path.isdir(args.results):
        p.exit(2, f"{p.prog}: error: --results {args.results} is not a directory\n")
    missing = data.missing_folder(getattr(args, "data", data.DEFAULT_ROOT), data.DEFAULT_ROOT)
    if missing:
        p.exit(2, f"{p.prog}: error: {missing}\n")
    program.ready()  # Ctrl-C from here is a KeyboardInterrupt, caught below
    try:
        results.refuse_links(args.results)
        return job()
    except (results.ResultsError, data.DataError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except (KeyError, TypeError, IndexError, AttributeError) as e:  # a file that passed load() but lacks a key
        p.exit(2, f"{p.prog}: error: a file in {args.results} lacks what train.py writes ({type(e).__name__}: {e})\n")
    except OSError as e:  # a read-only or full results folder
        p.exit(1, f"{p.prog}: error: cannot write {e.filename or args.results}: {e.strerror}\n")
    except KeyboardInterrupt:
        p.exit(130, f"{p.prog}: interrupted; every file is the old one or the new one, none half-written\n")
