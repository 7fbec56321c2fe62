import subprocess
import sys


def test_import_timm_works_in_a_fresh_interpreter():
    """`import timm` must work after weakseg.compat, whatever torchvision wheel is installed."""
    code = (
        "from weakseg.compat import import_timm, import_torchvision\n"
        "timm = import_timm(); tv = import_torchvision()\n"
        "import timm as t2, torchvision as tv2\n"
        "assert t2 is timm and tv2 is tv\n"
        "m = timm.create_model('resnet18', pretrained=False, num_classes=3)\n"
        "print(type(m).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ResNet"
