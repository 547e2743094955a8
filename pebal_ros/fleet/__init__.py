"""Fleet replay and calibration on a Ray cluster (``pebal replay --ray``, ``pebal calibrate --ray``).

Ray is an optional extra (``pip install 'pebal_ros[ray]'``): only ``engine.py`` imports it, and only
when ``--ray`` is given. The per-bag work is the one-machine code itself (``replay_bag``,
``calibrate.cli.accumulate``) run inside actors that open the model once; the driver schedules one
task per bag, retries a bag whose worker was lost, and commits each finished bag under OUT with a
done marker written last, so a result never looks complete when it is not and ``--resume`` skips
exactly the bags that finished.

  engine.py    importing Ray, connecting (address / auto / local), the actor pool and its fault handling
  worker.py    the actor: model opened once; replay one bag into a temporary folder; score one bag
  done.py      the per-bag done marker, "is this bag complete", committing a finished bag
  figures.py   per-bag figures for the fleet report (alarms, worst frames, latency histogram)
  storage.py   bags named by URI (s3://, gs://, file://) through pyarrow's file systems
  report.py    the fleet report: OUT/index.html, fleet_summary.json, bags.csv, plots
  replay.py    the fleet replay driver;  calibrate.py: the fleet calibration driver
  options.py   ``--ray`` and friends; replay_cli.py / calibrate_cli.py: the commands with them
"""
