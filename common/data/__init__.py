"""The data layer: every scene, whatever its format, becomes the same `Scene` of cameras and splits.

    scene              the primitives: Cameras, Split, Scene, image reading, downscaling, backgrounds, the checks
                       every loader runs (finite cameras, the background of RGB images); imports no format
    blender            the Blender (nerf_synthetic) layout: transforms_{train,val,test}.json + RGBA PNGs
    multiscale         mip-NeRF's multiscale Blender scenes (metadata.json), built from a Blender-layout scene
    llff               forward-facing LLFF captures (poses_bounds.npy + images_<f>/), NDC rays, spiral path
    llff360            360-degree captures in the same files, normalised as mip-NeRF 360 does (PCA)
    ngp_transforms     Instant-NGP / nerfstudio captures: one transforms.json with intrinsics and distortion
    colmap             COLMAP projects: a sparse model (cameras, images, points3D; binary or text) + images/
    dtu                NeuS / DTU scans (cameras_sphere.npz + image/ + mask/)
    builtin_scene      the procedural object scene every script trains on by default, with its exact SDF
    builtin_unbounded  the same objects inside a distant sky (03's default)
    textured_scene     a small textured scene (value noise) that structure from motion can pose, for common.capture
    load               the dispatcher: `load_scene` picks the format of a name or folder and calls its reader

Arrows point one way: load -> formats -> scene. A format that is made from another (multiscale and the built-in
scenes are written in the Blender layout) imports that format's public functions; no module imports another's
`_private` names, and nothing in common/data imports `load`. Importing this package loads nothing: import the
module you need (`from common.data.load import load_scene`).
"""
