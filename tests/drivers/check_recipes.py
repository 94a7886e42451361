"""drivers_recipes: the recipes in docs/locks.md are the tested files in tests/drivers/recipes/.

docs/locks.md marks each recipe with a line
    <!-- recipe: tests/drivers/recipes/NAME -->
directly followed by a fenced code block; the block must be the file, byte for byte (less
the final newline).  Every file in tests/drivers/recipes/ must appear.  So the code a
reader copies is the code the driver tests run.

    python3 check_recipes.py docs/locks.md
"""

import os
import re
import sys

MARK = re.compile(r"^<!-- recipe: (\S+) -->\n```[a-z]*\n(.*?)\n```$", re.M | re.S)


def main(doc):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    problems, seen, good = [], set(), 0
    for m in MARK.finditer(text):
        rel, block = m.group(1), m.group(2)
        seen.add(rel)
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                want = f.read().rstrip("\n")
        except OSError as e:
            problems.append("%s: %s" % (rel, e))
            continue
        if block == want:
            good += 1
        else:
            for i, (a, b) in enumerate(zip(block.split("\n"), want.split("\n"))):
                if a != b:
                    problems.append("%s differs at line %d:\n  docs: %s\n  file: %s"
                                    % (rel, i + 1, a, b))
                    break
            else:
                problems.append("%s: lengths differ (docs %d lines, file %d)"
                                % (rel, block.count("\n") + 1, want.count("\n") + 1))
    recipes = os.path.join(root, "tests", "drivers", "recipes")
    for name in sorted(os.listdir(recipes)):
        rel = "tests/drivers/recipes/" + name
        if rel not in seen:
            problems.append("%s is not in %s" % (rel, doc))
    for p in problems:
        print("FAIL " + p)
    print("drivers_recipes: %d passed, %d failed" % (good, len(problems)))
    return 1 if problems or not seen else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
