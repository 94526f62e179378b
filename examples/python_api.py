"""trustvision from Python: train the demo CNN, attack it, audit it (offline; its wall time is measured by
``python examples/readme_output.py`` and written into the README beside the demo's)."""
import trustvision as tv
from trustvision.training import mnist_demo_model

module, _, test, _, _ = mnist_demo_model()
clf = tv.Classifier(module, num_classes=10, channels=1, name="mnist-smallcnn")

x, y = test.x[:64], test.y[:64]
res = tv.attacks.PGD(eps=0.1, steps=40)(clf, x, y)
print(f"PGD eps=0.1: success {res.success.float().mean():.1%}, max Linf {res.norms.max():.3f}")

cfg = tv.AuditConfig(n_images=200, robustness=tv.RobustnessConfig(
    attacks=["fgsm", "pgd", "deepfool"], eps_linf=[0, 0.05, 0.1, 0.2], eps_l2=[0, 0.5, 1, 2]))
results = tv.audit(clf, test, cfg, out_dir="python-api-out")
print(results["summary"])
