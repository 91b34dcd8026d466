"""Re-evaluate every checkpoint in a results folder and the folders below it, and compare with its JSON: the
weights' hash in the checkpoint's name, the final accuracy and correct count, the misclassified list (index,
label, prediction), near_zero_fraction, and the final loss (to 1e-4: an evaluation packed with other models
rounds its sums differently). results.load has already checked every number derived from the per-epoch records.
A checkpoint that no JSON names fails too: a seed dropped from its file by hand leaves its weights behind. A run's
λ's must give, on its weights, about the penalty recorded for its last epoch; choice.json and recipe.json must
equal what their runs give, and every data-size run must have the config datasize.py gives it (crosscheck.py).
A symbolic link anywhere under the folder is refused, as plot.py and report.py refuse it (cli.py).

    python verify.py [--results DIR] [--data DIR]       # make verify; exit 1 if anything differs
"""
import program

if __name__ == "__main__":
    program.quiet_until_ready("verify.py")  # Ctrl-C while torch imports: one line; cli.run_tool takes over from there

import os
import sys

import torch
import torch.nn.functional as F

import cli
import crosscheck
import data
import results
from model import Net, near_zero_fraction


@torch.no_grad()
def evaluate(cfg, state_dict, images, labels):
    """(predictions, mean loss) of one checkpoint, evaluated as training evaluates: fp32, eval mode, its memory
    format and eval batch."""
    net = Net(cfg["dropout"], cfg["norm"], cfg["virtual_batch"])
    net.load_state_dict(state_dict)
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=fmt).eval()
    preds, loss = [], torch.zeros((), dtype=torch.float64)
    for i in range(0, len(images), cfg["eval_batch_size"]):
        logits = net(data.to_float(images[i:i + cfg["eval_batch_size"]], cfg["normalize"]).contiguous(memory_format=fmt))
        loss += F.cross_entropy(logits, labels[i:i + cfg["eval_batch_size"]].long(), reduction="sum")
        preds.append(logits.argmax(1))
    return torch.cat(preds), loss.item() / len(images)


def check_run(folder, cfg, run, images, labels):
    """What differs between one run's checkpoint and its JSON, as a list of short phrases (empty: all equal)."""
    weights = results.load_checkpoint(folder, run)
    preds, loss = evaluate(cfg, weights, images, labels)
    wrong = (preds != labels.long()).nonzero().flatten().tolist()
    listed = [(m["index"], m["label"], m["pred"]) for m in run["misclassified"]]
    found = [(i, int(labels[i]), int(preds[i])) for i in wrong]
    acc, last_loss = 100.0 * (len(labels) - len(wrong)) / len(labels), run["epochs"][-1]["test_loss"]
    problems = []
    if not run["checkpoint"].endswith(f"-{results.weights_sha256(weights)[:8]}.pt"):
        problems.append("weights do not match the hash in the checkpoint's name")
    if acc != run["final_test_acc"] or len(labels) - len(wrong) != run["test_correct"]:
        problems.append(f"accuracy {acc:.2f}%, the JSON says {run['final_test_acc']:.2f}%")
    if found != listed:
        problems.append(f"misclassified list differs ({len(found)} found, {len(listed)} listed)")
    if run.get("near_zero_fraction") is not None and near_zero_fraction(weights) != run["near_zero_fraction"]:
        problems.append(f"near_zero_fraction {near_zero_fraction(weights)}, the JSON says {run['near_zero_fraction']}")
    if last_loss is not None and abs(loss - last_loss) > 1e-4 * max(1.0, abs(last_loss)):
        problems.append(f"loss {loss:.6f}, the JSON says {last_loss:.6f}")
    relabelled = crosscheck.penalty_problem(cfg, run, weights)
    return acc, problems + ([relabelled] if relabelled else [])


def verify_tree(root, data_dir):
    """(lines to print, runs that differ, runs checked, unnamed checkpoints, files that disagree with their runs)
    for every results folder under root."""
    mnist = data.load_mnist(data_dir, log=lambda s: None)
    lines, bad, checked, named = [], 0, 0, set()
    for folder in results.result_folders(root):
        for name, r in results.load_folder(folder).items():
            images, labels = data.eval_split(mnist, r["config"]["val"], r["config"]["test_limit"])
            named |= {os.path.normpath(os.path.join(folder, run["checkpoint"])) for run in r["runs"] if run.get("checkpoint")}
            for run in (run for run in r["runs"] if run["status"] == "ok"):
                acc, problems = check_run(folder, r["config"], run, images, labels)
                checked, bad = checked + 1, bad + bool(problems)
                where = os.path.relpath(os.path.join(folder, run["checkpoint"]))
                lines.append(f"{where} -> {acc:.2f}%: " + ("; ".join(problems).upper() if problems else "equals its JSON"))
    found = (os.path.normpath(os.path.join(d, f)) for d, files in results.folders(root) for f in files if f.endswith(".pt"))
    unnamed = sorted(p for p in found if p not in named)
    lines += [f"{os.path.relpath(p)}: NO JSON NAMES THIS CHECKPOINT" for p in unnamed]
    disagree = crosscheck.check_tree(root)
    lines += [f"DISAGREES: {p}" for p in disagree]
    return lines, bad, checked, unnamed, disagree


def main(argv=None):
    p = cli.tool_parser("verify.py", __doc__, "folder to check, with its subfolders (default: the repository's "
                            "results/)", "MNIST folder (default: the repository's data/)")
    args = p.parse_args(argv)
    lines, bad, checked, unnamed, disagree = cli.run_tool(p, args, lambda: verify_tree(args.results, args.data))
    print("\n".join(lines))
    if not checked:
        p.exit(1, f"{p.prog}: error: no checkpoint to verify under {args.results}: every run diverged or none is there\n")
    if bad:
        p.exit(1, f"{p.prog}: error: {bad} of {checked} checkpoints do not re-evaluate to their JSON\n")
    if unnamed:  # a run dropped from its JSON, or a kill between saving a JSON and deleting what it replaced
        p.exit(1, f"{p.prog}: error: {len(unnamed)} checkpoint(s) named by no JSON, first {os.path.relpath(unnamed[0])}: "
                  f"restore the run they belong to, or delete them\n")
    if disagree:
        p.exit(1, f"{p.prog}: error: {len(disagree)} file(s) disagree with the runs they describe, first: {disagree[0]}\n")
    print(f"all {checked} checkpoints under {args.results} re-evaluate to their JSON (accuracy, correct count, "
          f"misclassified list, near-zero fraction, loss, penalty), and every choice.json and recipe.json to its runs")


if __name__ == "__main__":
    sys.exit(main())
