"""Make docs/img/annotate.png: the annotation page over a small synthetic dataset, in headless Chromium.

    .venv/bin/python docs/img/annotate_screenshot.py [--out docs/img/annotate.png]

Needs Debian's chromium + chromium-driver and the dev and annotate extras. The dataset's scribbles
are simulated (``weakseg data synthetic``); the checkpoint has random weights (no training), so
the uncertainty scores on the screenshot show the list, not a model's quality.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By

from weakseg.annotate import create_app, make_server
from weakseg.builders import build_model
from weakseg.config import config_to_dict, load_config
from weakseg.data.synthetic import make_synthetic_dataset, synthetic_class_names
from weakseg.engine.checkpoint import save_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "annotate.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_dataset(Path(tmp) / "shapes", num_train=8, num_val=0, size=(180, 240), seed=3)
        cfg = load_config(None, ["model.pretrained=null", "model.head=deeplabv2"])
        model = build_model(cfg, 4, pretrained=False)
        ckpt = save_checkpoint(
            Path(tmp) / "model.ckpt",
            model=model.state_dict(),
            config=config_to_dict(cfg),
            classes=synthetic_class_names(4),
            step=1,
        )
        app = create_app(root, ckpt, device="cpu")
        server = make_server(app, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--window-size=1100,640",
            "--force-device-scale-factor=1",
        ):
            options.add_argument(arg)
        driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(shutil.which("chromedriver"))
        )
        try:
            driver.get(f"http://127.0.0.1:{server.server_port}/#train_0002")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = driver.find_element(By.ID, "rank-status").text
                if (
                    driver.execute_script("return document.body.dataset.ready") == "yes"
                    and "ranked" in status
                ):
                    break
                time.sleep(0.2)
            driver.find_element(By.ID, "tab-uncertain").click()
            time.sleep(0.5)
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
            server.shutdown()
            app.extensions["weakseg_annotate"].close()
    with Image.open(io.BytesIO(png)) as shot:  # 256 colours keep the file small
        shot.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
            args.out, optimize=True
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
