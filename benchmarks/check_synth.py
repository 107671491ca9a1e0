"""Ground-truth consistency of a generated street, from the files it wrote.

    python benchmarks/check_synth.py OUT_DIR

Prints, as JSON, the reprojection error of the reference model's 3D points at
their observations, and the disagreement of the correspondences with depth and
true poses (see locseg.synth.validate).
"""

from __future__ import annotations

import json
import sys

from locseg.synth.validate import correspondence_errors, reprojection_errors


def main() -> None:
    street = sys.argv[1]
    print(json.dumps({"reprojection": reprojection_errors(street).summary(),
                      "correspondences": correspondence_errors(street).summary()}, indent=2))


if __name__ == "__main__":
    main()
