"""The README's Python tour: members of two kinds, predictions once per split, a fusion, a leaderboard."""

from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from modelfusion.datasets import load_dataset
from modelfusion.ensemble import make_combiner
from modelfusion.evaluate import evaluate
from modelfusion.members import SklearnMember, TorchMember
from modelfusion.predictions import collect_predictions
from modelfusion.report import print_leaderboard
from modelfusion.training import RECIPES

data = load_dataset("digits", seed=0)  # standardized, stratified 60/20/20 splits
X, y = data.train.X.numpy(), data.train.y.numpy()

net = RECIPES["digits-mlp"].train(data, seed=0)  # the settings that reach digits' published accuracy
members = [
    TorchMember(net, name="mlp"),
    SklearnMember(LogisticRegression(max_iter=2000).fit(X, y), name="logreg"),
    SklearnMember(RandomForestClassifier(300, random_state=0).fit(X, y), name="forest"),
]

# Each member runs once per split; every combiner and metric then works from these tensors.
val = collect_predictions(members, data.val.X, data.val.y, "val", progress=False)
test = collect_predictions(members, data.test.X, data.test.y, "test", progress=False)

fusion = make_combiner("mean").fit(val)  # fitted on validation only
report = evaluate(test, {"mean": fusion.predict_proba(test)})
print_leaderboard(report.to_results())
print("fusion vs best member:", report.row("mean").vs_best_member)
