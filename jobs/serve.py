"""Ray job entry point for serving (arguments: those of `raylm serve`).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/serve.py --config cluster --name NAME [--checkpoint PATH]

On a cluster the Serve app outlives the job: the job deploys it, prints the URL and
ends; `serve status` shows it and `serve shutdown` stops it. The same deployment is
written to <storage>/<name>/serve/serve_config.yaml for `serve deploy` or a KubeRay RayService.
"""

from _entry import run_step_job  # jobs/ is on sys.path when this file runs as a script

if __name__ == "__main__":
    run_step_job("serve")
