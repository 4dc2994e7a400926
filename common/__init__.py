"""Pieces shared by the numbered scripts (CleanRL style: each script stays complete, only shared plumbing is here).

    datasets       Blender-layout scenes (and the built-in one): Cameras, Split, Scene, load_scene, backgrounds;
                   non-finite cameras refused, the background of RGB images stated
    builtin_scene  the procedural scene every script trains on by default, with its exact SDF
    rays           get_rays (OpenGL convention, pixel centres), random ray batches, chunked rendering
    metrics        PSNR, SSIM
    paths          camera paths for videos (spherical, spiral)
    video          images, mp4/gif videos, coloured depth
    checkpoints    atomic save, load, latest (valid), resume_config (--resume against the checkpoint's settings)
    training       seeding, CSV log with progress bar, PSNR plot, config.json, TrainingRun, Ctrl-C/SIGTERM,
                   check_finite
    run_folder     --outdir checked before data loads, and locked against a second run
    cli            dataclass -> argparse with range checks, device choice, one-line user errors, run_main
    numerics       named numerical guards (safe_exp, safe_normalize, safe_sqrt, eps constants)
    errors         UserError, Terminated (SIGTERM), warn (one warning line)
    dispatch       many independent tasks here (N at a time), on a Ray cluster or as a SLURM array (submitit)

Import the modules you need (`from common.datasets import load_scene`); importing `common` itself loads nothing.
"""
