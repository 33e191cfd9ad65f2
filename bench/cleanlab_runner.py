"""Runs inside bench/.venv-cleanlab: cleanlab 2.9's `find_label_issues` with its defaults on given
out-of-fold probabilities.

    python cleanlab_runner.py IN.npz OUT.npy      # IN holds `probs` [N, C] and `labels` [N]; OUT: a bool mask
"""

import sys

import numpy as np
from cleanlab.filter import find_label_issues

arrays = np.load(sys.argv[1])
np.save(sys.argv[2], find_label_issues(arrays["labels"], arrays["probs"]))
