"""Pieces shared by the numbered scripts (CleanRL style: each script stays complete, only shared plumbing is here).

    data/          the data layer, one package (common/data/__init__.py lists its modules): the primitives
                   (data.scene: Cameras, Split, Scene, image reading, downscaling, backgrounds, finiteness
                   checks), one reader per format (blender, multiscale, llff, llff360, ngp_transforms, dtu, the
                   built-in scenes builtin_scene and builtin_unbounded) and the dispatcher data.load.load_scene
    rays           get_rays (OpenGL convention, pixel centres), random ray batches, chunked rendering
    metrics        PSNR, SSIM, the best constant image's PSNR, Chamfer distance and mesh sampling
    evaluation     scoring a split (pictures, metrics.json), the dead-model check, the default videos
    mesh           grid sampling, marching cubes, PLY files
    visual_hull    carving a grid with the masks of every view (05)
    dtu_eval       DTU's surface evaluation (0.2 mm resampling, observation mask, plane filter, truncation) (05)
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

Import the modules you need (`from common.data.load import load_scene`); importing `common` itself loads nothing.
"""
